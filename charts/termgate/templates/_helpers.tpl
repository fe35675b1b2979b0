{{/*
Labels on every object's metadata: the part-of label the kustomize base
puts on every object, Helm's standard labels, and global.commonLabels.
Never in selectors or pod templates, so an upgrade of the chart does not
change a selector.
*/}}
{{- define "termgate.labels" -}}
app.kubernetes.io/part-of: termgate
app.kubernetes.io/managed-by: {{ .Release.Service }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- with .Values.global.commonLabels }}
{{ toYaml . }}
{{- end }}
{{- end }}

{{/* The webhook's and the agent's namespaces. */}}
{{- define "termgate.namespace" -}}{{ .Values.global.namespace }}{{- end }}
{{- define "termgate.agentNamespace" -}}{{ .Values.global.agentNamespace }}{{- end }}

{{/* Service account names. */}}
{{- define "termgate.agentServiceAccount" -}}{{ default "termgate-agent" .Values.agent.serviceAccount.name }}{{- end }}
{{- define "termgate.webhookServiceAccount" -}}{{ default "termgate-webhook" .Values.webhook.serviceAccount.name }}{{- end }}
{{- define "termgate.notifierServiceAccount" -}}{{ default "termgate-notifier" .Values.notifier.serviceAccount.name }}{{- end }}

{{/*
The agent's user name, as the policies and the confinement webhook match
it. Written as four literals joined by +, as the manifests do, so that the
expressions read the same in both installs.
*/}}
{{- define "termgate.agentUserExpression" -}}
request.userInfo.username == 'system:serviceaccount:' + '{{ include "termgate.agentNamespace" . }}' + ':' + '{{ include "termgate.agentServiceAccount" . }}'
{{- end }}

{{/* A component's image: (list $ .Values.agent.image). */}}
{{- define "termgate.image" -}}
{{- $root := index . 0 -}}
{{- $img := index . 1 -}}
{{- $tag := default $root.Chart.AppVersion $img.tag -}}
{{- if $img.digest -}}
{{ $img.repository }}:{{ $tag }}@{{ $img.digest }}
{{- else -}}
{{ $img.repository }}:{{ $tag }}
{{- end -}}
{{- end }}

{{/*
A flag the shipped manifests do not pass, rendered only when its value
differs from the binary's default: (list "--name" value default). The
defaults are those of docs/reference.md, and the chart's test checks
values.yaml against that page.
*/}}
{{- define "termgate.optionalFlag" -}}
{{- $name := index . 0 -}}
{{- $value := index . 1 -}}
{{- $default := index . 2 -}}
{{- if ne (toString $value) (toString $default) }}
- {{ printf "%s=%v" $name $value | quote }}
{{- end -}}
{{- end }}

{{/* The flags every component shares. */}}
{{- define "termgate.commonFlags" -}}
{{- include "termgate.optionalFlag" (list "--log-format" .Values.global.logFormat "json") }}
{{- include "termgate.optionalFlag" (list "-v" .Values.global.verbosity 0) }}
{{- end }}

{{/* The port of a bind address such as 127.0.0.1:9808 or :8081. */}}
{{- define "termgate.port" -}}{{ regexReplaceAll "^.*:" . "" }}{{- end }}

{{/* The host of a bind address, empty for ":port". */}}
{{- define "termgate.host" -}}{{ regexReplaceAll ":[0-9]+$" . "" }}{{- end }}

{{/* The name of the webhook configurations (both share it). */}}
{{- define "termgate.webhookConfigName" -}}termgate{{- end }}

{{/* The CA bundle of the webhook configurations: only in mode provided. */}}
{{- define "termgate.caBundle" -}}
{{- if eq .Values.certificates.mode "provided" }}
caBundle: {{ .Values.certificates.provided.caBundle }}
{{- end -}}
{{- end }}

{{/* The webhook configurations' metadata annotations. */}}
{{- define "termgate.webhookConfigAnnotations" -}}
{{- if eq .Values.certificates.mode "certManager" }}
annotations:
  cert-manager.io/inject-ca-from: {{ include "termgate.namespace" . }}/{{ .Values.certificates.certManager.certificateName }}
{{- end -}}
{{- end }}

{{/* Pull secrets of every pod. */}}
{{- define "termgate.imagePullSecrets" -}}
{{- with .Values.global.imagePullSecrets }}
imagePullSecrets:
{{ toYaml . }}
{{- end -}}
{{- end }}
