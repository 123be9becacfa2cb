// The AWS SDK for Java v2 as a workload uses it: the default credential chain, configured only by
// the environment (what the webhook injects, plus the endpoint, CA and region the test sets),
// then sts:GetCallerIdentity. Prints one JSON line, the report tests/cluster/sdk.py reads.
import java.io.FileInputStream;
import java.io.FileOutputStream;
import java.nio.file.Files;
import java.nio.file.Path;
import java.security.KeyStore;
import java.security.cert.Certificate;
import java.security.cert.CertificateFactory;
import java.util.LinkedHashMap;
import java.util.Map;
import java.util.regex.Matcher;
import java.util.regex.Pattern;
import software.amazon.awssdk.auth.credentials.AwsCredentials;
import software.amazon.awssdk.auth.credentials.DefaultCredentialsProvider;
import software.amazon.awssdk.awscore.exception.AwsServiceException;
import software.amazon.awssdk.services.sts.StsClient;
import software.amazon.awssdk.services.sts.model.GetCallerIdentityResponse;

public final class Main {
    public static void main(String[] args) throws Exception {
        trustCaBundle();
        Map<String, Object> report = new LinkedHashMap<>();
        report.put("sdk", "java");
        report.put("ok", false);
        try (DefaultCredentialsProvider chain = DefaultCredentialsProvider.builder().build();
             StsClient sts = StsClient.builder().credentialsProvider(chain).build()) {
            AwsCredentials credentials = chain.resolveCredentials();
            report.put("provider", credentials.providerName().orElse(null));
            GetCallerIdentityResponse identity = sts.getCallerIdentity();
            report.put("ok", true);
            report.put("arn", identity.arn());
            report.put("account", identity.account());
        } catch (RuntimeException e) {
            report.put("error", e.toString());
            for (Throwable cause = e; cause != null; cause = cause.getCause()) {
                if (cause instanceof AwsServiceException service) {
                    report.put("code", service.awsErrorDetails().errorCode());
                    report.put("message", service.awsErrorDetails().errorMessage());
                    break;
                }
            }
            // The default chain keeps only the messages of its providers' errors, which name the
            // HTTP status of an answer from AWS ("… (Service: Sts, Status Code: 403, …)").
            Matcher status = Pattern.compile("Status Code: (\\d{3})").matcher(e.toString());
            if (!report.containsKey("code") && status.find()) {
                report.put("status", status.group(1));
            }
        }
        System.out.println(json(report));
    }

    /** The Java SDK reads no AWS_CA_BUNDLE: it trusts the JVM's trust store. A workload on a
     *  private CA makes one from the PEM file; so does this, in java.io.tmpdir. */
    private static void trustCaBundle() throws Exception {
        String bundle = System.getenv("AWS_CA_BUNDLE");
        if (bundle == null || bundle.isEmpty()) {
            return;
        }
        KeyStore store = KeyStore.getInstance("PKCS12");
        store.load(null, null);
        int n = 0;
        try (FileInputStream in = new FileInputStream(bundle)) {
            for (Certificate ca : CertificateFactory.getInstance("X.509").generateCertificates(in)) {
                store.setCertificateEntry("ca-" + n++, ca);
            }
        }
        Path file = Files.createTempFile("truststore", ".p12");
        try (FileOutputStream out = new FileOutputStream(file.toFile())) {
            store.store(out, "changeit".toCharArray());
        }
        System.setProperty("javax.net.ssl.trustStore", file.toString());
        System.setProperty("javax.net.ssl.trustStorePassword", "changeit");
        System.setProperty("javax.net.ssl.trustStoreType", "PKCS12");
    }

    private static String json(Map<String, Object> map) {
        StringBuilder out = new StringBuilder("{");
        for (Map.Entry<String, Object> entry : map.entrySet()) {
            if (out.length() > 1) {
                out.append(", ");
            }
            out.append(quote(entry.getKey())).append(": ");
            Object value = entry.getValue();
            out.append(value == null || value instanceof Boolean ? String.valueOf(value) : quote(value.toString()));
        }
        return out.append("}").toString();
    }

    private static String quote(String s) {
        StringBuilder out = new StringBuilder("\"");
        for (char c : s.toCharArray()) {
            if (c == '"' || c == '\\') {
                out.append('\\').append(c);
            } else if (c < 0x20) {
                out.append(String.format("\\u%04x", (int) c));
            } else {
                out.append(c);
            }
        }
        return out.append('"').toString();
    }
}
