{{- define "sensorflow-operator.name" -}}
{{- .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}

{{- define "sensorflow-operator.fullname" -}}
{{- if contains .Chart.Name .Release.Name -}}
{{- .Release.Name | trunc 63 | trimSuffix "-" -}}
{{- else -}}
{{- printf "%s-%s" .Release.Name .Chart.Name | trunc 63 | trimSuffix "-" -}}
{{- end -}}
{{- end -}}

{{- define "sensorflow-operator.selectorLabels" -}}
app.kubernetes.io/name: {{ include "sensorflow-operator.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end -}}

{{- define "sensorflow-operator.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" }}
{{ include "sensorflow-operator.selectorLabels" . }}
app.kubernetes.io/version: {{ .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end -}}

{{- define "sensorflow-operator.serviceAccountName" -}}
{{- if .Values.serviceAccount.create -}}
{{- default (include "sensorflow-operator.fullname" .) .Values.serviceAccount.name -}}
{{- else -}}
{{- default "default" .Values.serviceAccount.name -}}
{{- end -}}
{{- end -}}

{{- /* Watched namespaces, comma-separated: watch.namespaces, or the release namespace. */ -}}
{{- define "sensorflow-operator.watchNamespaces" -}}
{{- if .Values.watch.namespaces -}}
{{- join "," (uniq .Values.watch.namespaces) -}}
{{- else -}}
{{- .Release.Namespace -}}
{{- end -}}
{{- end -}}

{{- /* The operator's image, repository:tag (tag default: the chart's appVersion); also the processors' image of every pipeline that pins no processors.image. */ -}}
{{- define "sensorflow-operator.image" -}}
{{- printf "%s:%s" .Values.image.repository (.Values.image.tag | default .Chart.AppVersion) -}}
{{- end -}}

{{- /* Image repositories pipelines may use, comma-separated: policy.allowedImageRepositories, or image.repository. */ -}}
{{- define "sensorflow-operator.allowedImageRepositories" -}}
{{- if .Values.policy.allowedImageRepositories -}}
{{- join "," (uniq .Values.policy.allowedImageRepositories) -}}
{{- else -}}
{{- .Values.image.repository -}}
{{- end -}}
{{- end -}}

{{- /* Every core/v1 Volume type (its field names besides name), as the operator's --allowed-volume-types knows them. */ -}}
{{- define "sensorflow-operator.volumeTypes" -}}
awsElasticBlockStore,azureDisk,azureFile,cephfs,cinder,configMap,csi,downwardAPI,emptyDir,ephemeral,fc,flexVolume,flocker,gcePersistentDisk,gitRepo,glusterfs,hostPath,image,iscsi,nfs,persistentVolumeClaim,photonPersistentDisk,portworxVolume,projected,quobyte,rbd,scaleIO,secret,storageos,vsphereVolume
{{- end -}}

{{- /* "true" when the admission policy is rendered: policy.admission.enabled and something to refuse. */ -}}
{{- define "sensorflow-operator.admissionPolicy" -}}
{{- $p := .Values.policy -}}
{{- $repos := include "sensorflow-operator.allowedImageRepositories" . | splitList "," -}}
{{- $refused := list -}}
{{- range (include "sensorflow-operator.volumeTypes" . | splitList ",") -}}
{{- if not (has . $p.allowedVolumeTypes) }}{{ $refused = append $refused . }}{{ end -}}
{{- end -}}
{{- if and $p.admission.enabled (or (not (has "*" $repos)) (not $p.allowServiceAccountName) $refused) }}true{{ end -}}
{{- end -}}

{{- /*
Cross-field checks values.schema.json cannot express (JSON Schema compares no two fields);
included by deployment.yaml, so `helm lint`, `helm template` and `helm install` refuse them.
*/ -}}
{{- define "sensorflow-operator.validate" -}}
{{- $le := .Values.leaderElection -}}
{{- if and $le.enabled (not (lt (int $le.retryPeriodSeconds) (int $le.renewDeadlineSeconds))) -}}
{{- fail (printf "leaderElection.retryPeriodSeconds (%v) must be less than leaderElection.renewDeadlineSeconds (%v)" $le.retryPeriodSeconds $le.renewDeadlineSeconds) -}}
{{- end -}}
{{- if and $le.enabled (not (lt (int $le.renewDeadlineSeconds) (int $le.leaseSeconds))) -}}
{{- fail (printf "leaderElection.renewDeadlineSeconds (%v) must be less than leaderElection.leaseSeconds (%v)" $le.renewDeadlineSeconds $le.leaseSeconds) -}}
{{- end -}}
{{- if and .Values.monitoring.serviceMonitor.enabled (not .Values.metrics.service.enabled) -}}
{{- fail "monitoring.serviceMonitor.enabled needs metrics.service.enabled: the ServiceMonitor selects the operator's metrics Service" -}}
{{- end -}}
{{- end -}}
