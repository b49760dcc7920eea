{{/* Names and labels shared by every manifest. */}}
{{- define "repwatch.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "repwatch.fullname" -}}
{{- if .Values.fullnameOverride -}}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- $name := default .Chart.Name .Values.nameOverride -}}
{{- if contains $name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}
{{- end -}}

{{- define "repwatch.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
app.kubernetes.io/name: {{ include "repwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "repwatch.selector" -}}
app.kubernetes.io/name: {{ include "repwatch.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "repwatch.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) -}}
{{- end -}}

{{- define "repwatch.secretName" -}}
{{- default (printf "%s-secrets" (include "repwatch.fullname" .)) .Values.secrets.existingSecret -}}
{{- end -}}

{{- define "repwatch.hasSecret" -}}
{{- if or .Values.secrets.existingSecret .Values.secrets.adminToken .Values.secrets.kafkaPassword .Values.secrets.clientIdKey .Values.secrets.webhooks -}}true{{- end -}}
{{- end -}}

{{/* The repwatch configuration file: chart values, then .Values.config merged over them. */}}
{{- define "repwatch.config" -}}
{{- $secrets := "/etc/repwatch/secrets" -}}
{{- $kafka := dict "bootstrap_servers" .Values.kafka.bootstrapServers "security_protocol" .Values.kafka.securityProtocol -}}
{{- if .Values.kafka.saslMechanism -}}
{{- $_ := set $kafka "sasl_mechanism" .Values.kafka.saslMechanism -}}
{{- $_ := set $kafka "sasl_username" .Values.kafka.saslUsername -}}
{{- $_ := set $kafka "sasl_password" (dict "file" (printf "%s/kafka-password" $secrets)) -}}
{{- end -}}
{{- $hooks := list -}}
{{- range .Values.alerts.webhooks -}}
{{- $hooks = append $hooks (dict "url" .url "secret" (dict "file" (printf "%s/webhook-%s" $secrets .name))) -}}
{{- end -}}
{{- $monitor := dict "group_id" .Values.monitor.groupId "metrics_host" "0.0.0.0" "metrics_port" (int .Values.monitor.metricsPort) "checkpoint_dir" "/var/lib/repwatch/checkpoints" "checkpoint_interval_seconds" .Values.monitor.checkpoints.intervalSeconds -}}
{{- if gt (int .Values.monitor.adminPort) 0 -}}
{{- $_ := set $monitor "admin_host" "0.0.0.0" -}}
{{- $_ := set $monitor "admin_port" (int .Values.monitor.adminPort) -}}
{{- $_ := set $monitor "admin_token" (dict "file" (printf "%s/admin-token" $secrets)) -}}
{{- end -}}
{{- $serving := dict "host" "0.0.0.0" "port" (int .Values.sidecar.port) "queue_size" (int .Values.sidecar.queueSize) -}}
{{- if gt (int .Values.sidecar.grpcPort) 0 -}}
{{- $_ := set $serving "grpc_port" (int .Values.sidecar.grpcPort) -}}
{{- end -}}
{{- if .Values.secrets.clientIdKey -}}
{{- $_ := set $serving "client_id_key" (dict "file" (printf "%s/client-id-key" $secrets)) -}}
{{- end -}}
{{- $alerts := dict "kafka" .Values.alerts.kafka "source" .Values.alerts.source "webhooks" $hooks -}}
{{- $cfg := dict "kafka" $kafka "topics" .Values.topics "models" .Values.models "alerts" $alerts "monitor" $monitor "serving" $serving -}}
{{- toYaml (mergeOverwrite $cfg (deepCopy .Values.config)) -}}
{{- end -}}

{{- define "repwatch.podSecurity" -}}
securityContext:
  {{- toYaml .Values.podSecurityContext | nindent 2 }}
{{- with .Values.imagePullSecrets }}
imagePullSecrets:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- end -}}
