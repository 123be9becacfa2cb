// The AWS SDK for Go v2 as a workload uses it: the default credential chain, configured only by
// the environment (what the webhook injects, plus the endpoint, CA and region the test sets),
// then sts:GetCallerIdentity. Prints one JSON line, the report tests/cluster/sdk.py reads.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"github.com/aws/smithy-go"
)

func main() {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	report := map[string]any{"sdk": "go", "ok": false}
	cfg, err := config.LoadDefaultConfig(ctx)
	if err == nil {
		// The provider's name (stscreds.WebIdentityProviderName, endpointcreds.ProviderName…).
		creds, credsErr := cfg.Credentials.Retrieve(ctx)
		if credsErr == nil {
			report["provider"] = creds.Source
		}
		var out *sts.GetCallerIdentityOutput
		out, err = sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		if err == nil {
			report["ok"], report["arn"], report["account"] = true, *out.Arn, *out.Account
		}
	}
	if err != nil {
		report["error"] = err.Error()
		var apiErr smithy.APIError
		if errors.As(err, &apiErr) {
			report["code"], report["message"] = apiErr.ErrorCode(), apiErr.ErrorMessage()
		}
	}
	_ = json.NewEncoder(os.Stdout).Encode(report)
}
