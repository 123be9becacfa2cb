{{/* Names -------------------------------------------------------------------------------- */}}
{{- define "pod-identity-injector.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{/* <fullname> names the Deployment, Service, webhook configuration and RBAC objects; the
     self-managed Secret is <fullname>-tls, so keep room for the suffix (63 - 4). */}}
{{- define "pod-identity-injector.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 55 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 55 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "pod-identity-injector.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "pod-identity-injector.selectorLabels" -}}
app.kubernetes.io/name: {{ include "pod-identity-injector.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "pod-identity-injector.labels" -}}
helm.sh/chart: {{ include "pod-identity-injector.chart" . }}
{{ include "pod-identity-injector.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/part-of: pod-identity-injector
{{- with .Values.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end -}}

{{- define "pod-identity-injector.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "pod-identity-injector.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- required "serviceAccount.name is required when serviceAccount.create is false" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- define "pod-identity-injector.tlsSecretName" -}}
{{- $mode := .Values.certificates.mode -}}
{{- if eq $mode "existingSecret" -}}
{{- required "certificates.existingSecret.name is required when certificates.mode is existingSecret" .Values.certificates.existingSecret.name -}}
{{- else -}}
{{- printf "%s-tls" (include "pod-identity-injector.fullname" .) -}}
{{- end -}}
{{- end -}}

{{- define "pod-identity-injector.image" -}}
{{- $tag := .Values.image.tag | default .Chart.AppVersion | toString -}}
{{- if .Values.image.digest -}}
{{- printf "%s@%s" .Values.image.repository .Values.image.digest -}}
{{- else -}}
{{- printf "%s:%s" .Values.image.repository $tag -}}
{{- end -}}
{{- end -}}

{{/* Go durations ------------------------------------------------------------------------- */}}
{{/* Seconds (a float) of a Go duration such as 5s, 1m30s, 250ms; "" counts as the default
     passed in: (include "pod-identity-injector.seconds" (list VALUE DEFAULT)). */}}
{{- define "pod-identity-injector.seconds" -}}
{{- $text := index . 0 | toString | trim -}}
{{- if eq $text "" -}}{{- $text = index . 1 -}}{{- end -}}
{{- $total := 0.0 -}}
{{- if ne $text "0" -}}
{{- $units := dict "ns" 0.000000001 "us" 0.000001 "µs" 0.000001 "ms" 0.001 "s" 1.0 "m" 60.0 "h" 3600.0 -}}
{{- $parts := regexFindAll "([0-9]+(\\.[0-9]*)?|\\.[0-9]+)(ns|us|µs|ms|s|m|h)" $text -1 -}}
{{- if or (not $parts) (ne (join "" $parts) $text) -}}
{{- fail (printf "invalid Go duration %q (examples: 500ms, 5s, 1m30s)" $text) -}}
{{- end -}}
{{- range $parts -}}
{{- $number := regexFind "^([0-9]+(\\.[0-9]*)?|\\.[0-9]+)" . -}}
{{- $unit := trimPrefix $number . -}}
{{- $total = addf $total (mulf (float64 $number) (get $units $unit)) -}}
{{- end -}}
{{- end -}}
{{- $total -}}
{{- end -}}

{{/* terminationGracePeriodSeconds: longer than shutdown-delay + shutdown-timeout. */}}
{{- define "pod-identity-injector.terminationGracePeriodSeconds" -}}
{{- $delay := include "pod-identity-injector.seconds" (list .Values.config.shutdownDelay "0s") | float64 -}}
{{- $timeout := include "pod-identity-injector.seconds" (list .Values.config.shutdownTimeout "10s") | float64 -}}
{{- $drain := addf $delay $timeout -}}
{{- $set := .Values.terminationGracePeriodSeconds -}}
{{- if kindIs "invalid" $set -}}
{{- addf (ceil $drain) 5 | int -}}
{{- else -}}
{{- if le (float64 $set) $drain -}}
{{- fail (printf "terminationGracePeriodSeconds (%v) must exceed config.shutdownDelay + config.shutdownTimeout (%vs)" $set $drain) -}}
{{- end -}}
{{- $set | int -}}
{{- end -}}
{{- end -}}

{{/* Container credentials file path. */}}
{{- define "pod-identity-injector.containerCredentialsPath" -}}
{{- printf "%s/%s" (.Values.containerCredentials.mountPath | trimSuffix "/") .Values.containerCredentials.fileName -}}
{{- end -}}

{{- define "pod-identity-injector.containerCredentialsConfigMapName" -}}
{{- $cc := .Values.containerCredentials -}}
{{- if $cc.configMap.create -}}
{{- default (printf "%s-container-credentials" (include "pod-identity-injector.fullname" .)) $cc.configMap.name -}}
{{- else -}}
{{- required "containerCredentials.configMap.name is required when containerCredentials.source is configMap and configMap.create is false" $cc.configMap.name -}}
{{- end -}}
{{- end -}}

{{/* Arguments of `pod-identity-injector serve`. One flag per line, `--name=value`. */}}
{{- define "pod-identity-injector.args" -}}
{{- $fullname := include "pod-identity-injector.fullname" . -}}
{{- $c := .Values.config -}}
{{- $cc := .Values.containerCredentials -}}
{{- $mode := .Values.certificates.mode -}}
{{- $args := list "serve" (printf "--port=%v" (int .Values.service.containerPort)) -}}
{{- if not .Values.metrics.enabled -}}
{{- $args = append $args "--metrics-port=0" -}}
{{- else if ne (int .Values.metrics.port) 9999 -}}
{{- $args = append $args (printf "--metrics-port=%v" (int .Values.metrics.port)) -}}
{{- end -}}
{{- $args = append $args (printf "--namespace=%s" .Release.Namespace) -}}
{{- if gt (int .Values.healthPort) 0 -}}
{{- $args = append $args (printf "--health-port=%v" (int .Values.healthPort)) -}}
{{- end -}}
{{- if eq $mode "selfManaged" -}}
{{- $args = concat $args (list
      "--cert-mode=self-managed"
      (printf "--tls-secret=%s" (include "pod-identity-injector.tlsSecretName" .))
      (printf "--service-name=%s" $fullname)
      (printf "--webhook-configuration=%s" $fullname)) -}}
{{- $sm := .Values.certificates.selfManaged -}}
{{- $validity := include "pod-identity-injector.seconds" (list $sm.validity "2160h") | float64 -}}
{{- $renewBefore := include "pod-identity-injector.seconds" (list $sm.renewBefore "720h") | float64 -}}
{{- if ge $renewBefore $validity -}}
{{- fail (printf "certificates.selfManaged.renewBefore (%s) must be shorter than certificates.selfManaged.validity (%s)" (default "720h" $sm.renewBefore) (default "2160h" $sm.validity)) -}}
{{- end -}}
{{- with .Values.certificates.selfManaged.validity }}{{ $args = append $args (printf "--cert-validity=%s" .) }}{{ end -}}
{{- with .Values.certificates.selfManaged.renewBefore }}{{ $args = append $args (printf "--cert-renew-before=%s" .) }}{{ end -}}
{{- with .Values.certificates.selfManaged.checkInterval }}{{ $args = append $args (printf "--cert-check-interval=%s" .) }}{{ end -}}
{{- range .Values.certificates.selfManaged.extraSANs }}{{ $args = append $args (printf "--cert-san=%s" .) }}{{ end -}}
{{- else -}}
{{- $args = concat $args (list "--cert-mode=files" "--tls-cert=/etc/webhook/certs/tls.crt" "--tls-key=/etc/webhook/certs/tls.key") -}}
{{- end -}}
{{- if .Values.configMap.enabled -}}
{{- $args = append $args "--watch-config-map=true" -}}
{{- end -}}
{{- if not .Values.serviceAccountEvents.enabled -}}
{{- $args = append $args "--service-account-events=false" -}}
{{- end -}}
{{- if $cc.enabled -}}
{{- $args = append $args (printf "--watch-container-credentials-config=%s" (include "pod-identity-injector.containerCredentialsPath" .)) -}}
{{- end -}}
{{- range $key, $flag := dict
      "annotationPrefix" "annotation-prefix"
      "tokenAudience" "token-audience"
      "tokenMountPath" "token-mount-path"
      "awsDefaultRegion" "aws-default-region"
      "awsAccountId" "aws-account-id"
      "awsPartition" "aws-partition"
      "serviceAccountLookupGracePeriod" "service-account-lookup-grace-period"
      "resyncPeriod" "resync-period"
      "shutdownDelay" "shutdown-delay"
      "shutdownTimeout" "shutdown-timeout"
      "logFormat" "log-format"
      "logLevel" "log-level"
      "tlsMinVersion" "tls-min-version" -}}
{{- $value := index $c $key -}}
{{- if and (not (kindIs "invalid" $value)) (ne (toString $value) "") -}}
{{- $args = append $args (printf "--%s=%v" $flag $value) -}}
{{- end -}}
{{- end -}}
{{- range $key, $flag := dict "tokenExpiration" "token-expiration" "workers" "workers" "maxRequestBytes" "max-request-bytes" -}}
{{- $value := index $c $key -}}
{{- if not (kindIs "invalid" $value) -}}
{{- $args = append $args (printf "--%s=%v" $flag (int64 $value)) -}}
{{- end -}}
{{- end -}}
{{- range $key, $flag := dict "stsRegionalEndpoint" "sts-regional-endpoint" "roleSessionNameFromPod" "role-session-name-from-pod" "composeRoleArn" "compose-role-arn" "enableDebuggingHandlers" "enable-debugging-handlers" -}}
{{- if index $c $key -}}
{{- $args = append $args (printf "--%s=true" $flag) -}}
{{- end -}}
{{- end -}}
{{- with $c.tlsCipherSuites -}}
{{- $args = append $args (printf "--tls-cipher-suites=%s" (join "," .)) -}}
{{- end -}}
{{- range $key, $flag := dict
      "audience" "container-credentials-audience"
      "tokenMountPath" "container-credentials-token-mount-path"
      "tokenVolumeName" "container-credentials-token-volume-name"
      "tokenPath" "container-credentials-token-path"
      "fullUri" "container-credentials-full-uri" -}}
{{- with index $cc $key -}}
{{- $args = append $args (printf "--%s=%s" $flag .) -}}
{{- end -}}
{{- end -}}
{{- range .Values.extraArgs -}}
{{- $args = append $args (toString .) -}}
{{- end -}}
{{- toYaml $args -}}
{{- end -}}

{{/* The CA bundle of existingSecret mode, base64 (PEM input is encoded). */}}
{{- define "pod-identity-injector.existingCaBundle" -}}
{{- $ca := required "certificates.existingSecret.caBundle is required when certificates.mode is existingSecret" .Values.certificates.existingSecret.caBundle | trim -}}
{{- if contains "-----BEGIN" $ca -}}
{{- $ca | b64enc -}}
{{- else -}}
{{- $ca | replace "\n" "" -}}
{{- end -}}
{{- end -}}

{{/* selfManaged: the caBundle of the live webhook configuration (entry `name`, else the first
     entry that has one), or nothing. */}}
{{- define "pod-identity-injector.liveCaBundle" -}}
{{- $live := lookup "admissionregistration.k8s.io/v1" "MutatingWebhookConfiguration" "" .fullname -}}
{{- $found := "" -}}
{{- range (dig "webhooks" list $live) -}}
{{- $bundle := dig "clientConfig" "caBundle" "" . -}}
{{- if and $bundle (or (eq .name $.name) (not $found)) -}}{{- $found = $bundle -}}{{- end -}}
{{- end -}}
{{- $found -}}
{{- end -}}

{{/* PromQL matchers selecting this release's metrics. */}}
{{- define "pod-identity-injector.promSelector" -}}
{{- default (printf "namespace=%q, service=%q" .Release.Namespace (printf "%s-metrics" (include "pod-identity-injector.fullname" .))) .Values.metrics.prometheusRule.selector -}}
{{- end -}}

{{/* One entry of the MutatingWebhookConfiguration: dict root, fullname, name, failurePolicy,
     namespaceSelector, objectSelector. */}}
{{- define "pod-identity-injector.webhookEntry" -}}
{{- $root := .root -}}
{{- $wh := $root.Values.webhook -}}
- name: {{ .name }}
  admissionReviewVersions: ["v1", "v1beta1"]
  sideEffects: None
  failurePolicy: {{ .failurePolicy }}
  reinvocationPolicy: {{ $wh.reinvocationPolicy }}
  matchPolicy: {{ $wh.matchPolicy }}
  timeoutSeconds: {{ $wh.timeoutSeconds }}
  clientConfig:
    {{- if $wh.url }}
    url: {{ $wh.url | quote }}
    {{- else }}
    service:
      name: {{ .fullname }}
      namespace: {{ $root.Release.Namespace }}
      path: /mutate
      port: {{ $root.Values.service.port }}
    {{- end }}
    {{- if eq $root.Values.certificates.mode "existingSecret" }}
    caBundle: {{ include "pod-identity-injector.existingCaBundle" $root }}
    {{- else if eq $root.Values.certificates.mode "selfManaged" }}
    {{- /* The bundle the webhook wrote, carried over: an upgrade that adds an entry (strict
           mode) or replaces the object would otherwise leave calls failing TLS until the
           webhook writes it again. Empty on a first install and in `helm template`. */}}
    {{- with include "pod-identity-injector.liveCaBundle" (dict "root" $root "fullname" .fullname "name" .name) }}
    caBundle: {{ . }}
    {{- end }}
    {{- end }}
  rules:
    - operations: ["CREATE"]
      apiGroups: [""]
      apiVersions: ["v1"]
      resources: ["pods"]
      scope: Namespaced
  namespaceSelector:
    {{- toYaml .namespaceSelector | nindent 4 }}
  objectSelector:
    {{- toYaml .objectSelector | nindent 4 }}
{{- end -}}

{{/* "true" when `helm test` can run: enabled, and its namespace is one the webhook mutates. */}}
{{- define "pod-identity-injector.testsRunnable" -}}
{{- $t := .Values.tests -}}
{{- and $t.enabled (ne $t.namespace .Release.Namespace) (not (has $t.namespace .Values.webhook.namespaceSelector.excludeNamespaces)) -}}
{{- end -}}
