package kubemesh

import (
	"fmt"
	"strconv"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// Defaults of the options.
const (
	DefaultNamespace = "clustermesh-system"
	DefaultImage     = "ghcr.io/clustermesh/clustermesh:latest"
)

// The objects Enable manages in a cluster's namespace, by name, and those
// Connect and the apiserver write there.
const (
	APIServerName       = "clustermesh-apiserver" // Deployment, Service, ServiceAccount, Role(Binding); ClusterRole(Binding) with "-<namespace>"
	CASecretName        = "clustermesh-ca"        // the mesh CA: ca.crt, ca.key
	ServerSecretName    = "clustermesh-apiserver-server-cert"
	AdminSecretName     = "clustermesh-apiserver-admin-cert"
	RemoteSecretName    = "clustermesh-apiserver-remote-cert"
	MeshConfigName      = "clustermesh-config"      // ConfigMap: the cluster's name, id, mesh size and peers
	RemotesSecretName   = "clustermesh-remotes"     // the agents' remote configs, written by Connect
	TrustedCAsName      = "clustermesh-trusted-cas" // ConfigMap: peers' CAs the apiserver accepts (left by earlier versions of Connect)
	IdentitiesConfigMap = "clustermesh-identities"  // the apiserver's identity numbers (k8ssource.IdentityStore)
	AgentName           = "clustermesh-agent"       // the agent's DaemonSet, ServiceAccount and roles; its reports' Lease prefix
)

const (
	apiserverPort = 2379
	metricsPort   = 9963
	fieldManager  = "clustermesh"

	// Keys of the clustermesh-config ConfigMap.
	cfgClusterName  = "cluster-name"
	cfgClusterID    = "cluster-id"
	cfgMaxConnected = "max-connected-clusters"
	cfgServiceType  = "service-type"
	cfgPeers        = "peers" // comma-separated; written by connect

	// certsHashAnnotation on the pod template rolls the Deployment when its
	// certificates change.
	certsHashAnnotation = "clustermesh.io/certs-sha256"
	// trustedCAsHashAnnotation does the same for the trusted peer CAs.
	trustedCAsHashAnnotation = "clustermesh.io/trusted-cas-sha256"

	certDir       = "/var/lib/clustermesh/certs"
	trustedCAsDir = "/var/lib/clustermesh/trusted-cas"
)

// meshCluster is what enable configures: one cluster's mesh apiserver.
type meshCluster struct {
	Namespace    string
	Name         string
	ID           uint32
	MaxConnected uint32
	ServiceType  corev1.ServiceType
	Image        string
	Peers        []string
	// TrustedCAs are the peers' CAs of configmap clustermesh-trusted-cas
	// (peer name → PEM); the pod template carries their hash, so that a
	// change restarts the apiserver.
	TrustedCAs map[string]string
	// EnforcePolicy: the agents enforce the cluster's policy objects
	// (--policy-from-kubernetes).
	EnforcePolicy bool
}

func commonLabels() map[string]string {
	return map[string]string{
		"app.kubernetes.io/part-of":    "clustermesh",
		"app.kubernetes.io/managed-by": "clustermesh",
	}
}

func apiserverLabels() map[string]string {
	l := commonLabels()
	l["app.kubernetes.io/name"] = APIServerName
	return l
}

func selectorLabels() map[string]string {
	return map[string]string{"app.kubernetes.io/name": APIServerName}
}

func meta(name, namespace string) metav1.ObjectMeta {
	return metav1.ObjectMeta{Name: name, Namespace: namespace, Labels: apiserverLabels()}
}

func namespaceObject(ns string) *corev1.Namespace {
	return &corev1.Namespace{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: commonLabels()},
	}
}

func meshConfigObject(c meshCluster) *corev1.ConfigMap {
	return &corev1.ConfigMap{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"},
		ObjectMeta: meta(MeshConfigName, c.Namespace),
		Data: map[string]string{
			cfgClusterName:  c.Name,
			cfgClusterID:    strconv.FormatUint(uint64(c.ID), 10),
			cfgMaxConnected: strconv.FormatUint(uint64(c.MaxConnected), 10),
			cfgServiceType:  string(c.ServiceType),
		},
	}
}

func serviceAccountObject(c meshCluster) *corev1.ServiceAccount {
	return &corev1.ServiceAccount{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "ServiceAccount"},
		ObjectMeta: meta(APIServerName, c.Namespace),
	}
}

// clusterRoleName is per namespace, so that two meshes' apiservers in one
// cluster do not share (and disable does not delete) each other's role.
func clusterRoleName(ns string) string { return APIServerName + "-" + ns }

// The Kubernetes state source reads these (k8ssource).
func clusterRoleObject(c meshCluster) *rbacv1.ClusterRole {
	return &rbacv1.ClusterRole{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRole"},
		ObjectMeta: meta(clusterRoleName(c.Namespace), ""),
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"services", "pods", "namespaces", "nodes"}, Verbs: []string{"get", "list", "watch"}},
			{APIGroups: []string{"discovery.k8s.io"}, Resources: []string{"endpointslices"}, Verbs: []string{"get", "list", "watch"}},
			// The MCS API's exports (published as export specs).
			{APIGroups: []string{mcsGroup}, Resources: []string{"serviceexports"}, Verbs: []string{"get", "list", "watch"}},
		},
	}
}

// roleObject lets the apiserver keep its identity numbers in the configmap
// clustermesh-identities of its namespace.
func roleObject(c meshCluster) *rbacv1.Role {
	return &rbacv1.Role{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "Role"},
		ObjectMeta: meta(APIServerName, c.Namespace),
		Rules: []rbacv1.PolicyRule{
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, ResourceNames: []string{IdentitiesConfigMap}, Verbs: []string{"get", "update"}},
			// create cannot be limited to a name.
			{APIGroups: []string{""}, Resources: []string{"configmaps"}, Verbs: []string{"create"}},
		},
	}
}

func roleBindingObject(c meshCluster) *rbacv1.RoleBinding {
	return roleBinding(APIServerName, c.Namespace)
}

func clusterRoleBindingObject(c meshCluster) *rbacv1.ClusterRoleBinding {
	return clusterRoleBinding(clusterRoleName(c.Namespace), APIServerName, c.Namespace)
}

// roleBinding binds the Role name of namespace to the service account of
// the same name there.
func roleBinding(name, namespace string) *rbacv1.RoleBinding {
	return &rbacv1.RoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "RoleBinding"},
		ObjectMeta: meta(name, namespace),
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "Role", Name: name},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: name, Namespace: namespace}},
	}
}

// clusterRoleBinding binds the ClusterRole role (and is named after it)
// to the service account account of namespace.
func clusterRoleBinding(role, account, namespace string) *rbacv1.ClusterRoleBinding {
	return &rbacv1.ClusterRoleBinding{
		TypeMeta:   metav1.TypeMeta{APIVersion: "rbac.authorization.k8s.io/v1", Kind: "ClusterRoleBinding"},
		ObjectMeta: meta(role, ""),
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: account, Namespace: namespace}},
	}
}

// apiserverArgs is the command line of the apiserver container.
func apiserverArgs(c meshCluster) []string {
	args := []string{
		"clustermesh", "apiserver",
		"--cluster-name=" + c.Name,
		"--cluster-id=" + strconv.FormatUint(uint64(c.ID), 10),
		"--max-connected-clusters=" + strconv.FormatUint(uint64(c.MaxConnected), 10),
		"--cert-dir=" + certDir,
		"--state-source=kubernetes",
		"--namespace=" + c.Namespace,
		"--trusted-ca-dir=" + trustedCAsDir,
		fmt.Sprintf("--listen=0.0.0.0:%d", apiserverPort),
		fmt.Sprintf("--metrics-addr=:%d", metricsPort),
	}
	if len(c.Peers) > 0 {
		args = append(args, "--peer="+strings.Join(c.Peers, ","))
	}
	return args
}

func deploymentObject(c meshCluster, certsHash string) *appsv1.Deployment {
	one := int32(1)
	readOnly, optional := true, true
	annotations := map[string]string{certsHashAnnotation: certsHash}
	if len(c.TrustedCAs) > 0 {
		annotations[trustedCAsHashAnnotation] = trustedCAsHash(c.TrustedCAs)
	}
	return &appsv1.Deployment{
		TypeMeta:   metav1.TypeMeta{APIVersion: "apps/v1", Kind: "Deployment"},
		ObjectMeta: meta(APIServerName, c.Namespace),
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: selectorLabels()},
			// One store per cluster: never two apiservers at once.
			Strategy: appsv1.DeploymentStrategy{Type: appsv1.RecreateDeploymentStrategyType},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{
					Labels:      apiserverLabels(),
					Annotations: annotations,
				},
				Spec: corev1.PodSpec{
					ServiceAccountName: APIServerName,
					Containers: []corev1.Container{{
						Name:    "apiserver",
						Image:   c.Image,
						Command: apiserverArgs(c),
						Ports: []corev1.ContainerPort{
							{Name: "etcd", ContainerPort: apiserverPort, Protocol: corev1.ProtocolTCP},
							{Name: "metrics", ContainerPort: metricsPort, Protocol: corev1.ProtocolTCP},
						},
						ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{
							TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(apiserverPort)},
						}},
						VolumeMounts: []corev1.VolumeMount{
							{Name: "certs", MountPath: certDir, ReadOnly: readOnly},
							{Name: "trusted-cas", MountPath: trustedCAsDir, ReadOnly: readOnly},
						},
					}},
					Volumes: []corev1.Volume{
						{Name: "certs", VolumeSource: corev1.VolumeSource{Projected: &corev1.ProjectedVolumeSource{
							Sources: []corev1.VolumeProjection{
								{Secret: &corev1.SecretProjection{
									LocalObjectReference: corev1.LocalObjectReference{Name: ServerSecretName},
									Items: []corev1.KeyToPath{
										{Key: "ca.crt", Path: "ca.crt"},
										{Key: corev1.TLSCertKey, Path: "server.crt"},
										{Key: corev1.TLSPrivateKeyKey, Path: "server.key"},
									},
								}},
								{Secret: &corev1.SecretProjection{
									LocalObjectReference: corev1.LocalObjectReference{Name: AdminSecretName},
									Items: []corev1.KeyToPath{
										{Key: corev1.TLSCertKey, Path: "admin-" + c.Name + ".crt"},
										{Key: corev1.TLSPrivateKeyKey, Path: "admin-" + c.Name + ".key"},
									},
								}},
							},
						}}},
						{Name: "trusted-cas", VolumeSource: corev1.VolumeSource{ConfigMap: &corev1.ConfigMapVolumeSource{
							LocalObjectReference: corev1.LocalObjectReference{Name: TrustedCAsName}, Optional: &optional,
						}}},
					},
				},
			},
		},
	}
}

func serviceObject(c meshCluster) *corev1.Service {
	return &corev1.Service{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: meta(APIServerName, c.Namespace),
		Spec: corev1.ServiceSpec{
			Type:     c.ServiceType,
			Selector: selectorLabels(),
			Ports: []corev1.ServicePort{{
				Name: "etcd", Port: apiserverPort, TargetPort: intstr.FromInt32(apiserverPort), Protocol: corev1.ProtocolTCP,
			}},
		},
	}
}

// tlsSecret holds one certificate: tls.crt, tls.key and the CA's ca.crt.
func tlsSecret(name, ns string, certPEM, keyPEM, caPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: meta(name, ns),
		Type:       corev1.SecretTypeTLS,
		Data: map[string][]byte{
			corev1.TLSCertKey:       certPEM,
			corev1.TLSPrivateKeyKey: keyPEM,
			"ca.crt":                caPEM,
		},
	}
}

// configMapObject names a ConfigMap (for disable).
func configMapObject(name, ns string) *corev1.ConfigMap {
	return &corev1.ConfigMap{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "ConfigMap"}, ObjectMeta: meta(name, ns)}
}

func caSecretObject(ns string, certPEM, keyPEM []byte) *corev1.Secret {
	return &corev1.Secret{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Secret"},
		ObjectMeta: meta(CASecretName, ns),
		Type:       corev1.SecretTypeOpaque,
		Data:       map[string][]byte{"ca.crt": certPEM, "ca.key": keyPEM},
	}
}

// resourceOf maps a typed object to its API resource.
func resourceOf(obj runtime.Object) (schema.GroupVersionResource, bool, error) {
	switch obj.(type) {
	case *corev1.Namespace:
		return corev1.SchemeGroupVersion.WithResource("namespaces"), false, nil
	case *corev1.Secret:
		return corev1.SchemeGroupVersion.WithResource("secrets"), true, nil
	case *corev1.ConfigMap:
		return corev1.SchemeGroupVersion.WithResource("configmaps"), true, nil
	case *corev1.ServiceAccount:
		return corev1.SchemeGroupVersion.WithResource("serviceaccounts"), true, nil
	case *corev1.Service:
		return corev1.SchemeGroupVersion.WithResource("services"), true, nil
	case *appsv1.Deployment:
		return appsv1.SchemeGroupVersion.WithResource("deployments"), true, nil
	case *appsv1.DaemonSet:
		return appsv1.SchemeGroupVersion.WithResource("daemonsets"), true, nil
	case *rbacv1.Role:
		return rbacv1.SchemeGroupVersion.WithResource("roles"), true, nil
	case *rbacv1.RoleBinding:
		return rbacv1.SchemeGroupVersion.WithResource("rolebindings"), true, nil
	case *rbacv1.ClusterRole:
		return rbacv1.SchemeGroupVersion.WithResource("clusterroles"), false, nil
	case *rbacv1.ClusterRoleBinding:
		return rbacv1.SchemeGroupVersion.WithResource("clusterrolebindings"), false, nil
	}
	if isCRD(obj) {
		return crdGVR, false, nil
	}
	return schema.GroupVersionResource{}, false, fmt.Errorf("no API resource known for %T", obj)
}
