// The AWS SDK for JavaScript v3 as a workload uses it: the default credential chain of Node.js,
// configured only by the environment (what the webhook injects, plus the endpoint, CA and region
// the test sets), then sts:GetCallerIdentity. Prints one JSON line, the report
// tests/cluster/sdk.py reads. The CA: Node.js reads NODE_EXTRA_CA_CERTS (the SDK no AWS_CA_BUNDLE).
import { GetCallerIdentityCommand, STSClient } from "@aws-sdk/client-sts";
import { fromNodeProviderChain } from "@aws-sdk/credential-providers";

const report = { sdk: "js", ok: false };
try {
  const chain = fromNodeProviderChain();
  const credentials = await chain();
  // Which providers the chain used, as the SDK's feature ids record them (for its user agent).
  report.provider = Object.keys(credentials.$source ?? {}).join(",") || null;
  const identity = await new STSClient({ credentials: chain }).send(new GetCallerIdentityCommand({}));
  Object.assign(report, { ok: true, arn: identity.Arn, account: identity.Account });
} catch (error) {
  report.error = String(error);
  if (error.$metadata?.httpStatusCode) {
    Object.assign(report, { code: error.name, message: error.message });
  }
}
console.log(JSON.stringify(report));
