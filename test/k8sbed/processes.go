package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"
)

// processes are the node's components in start order.
func processes() []process {
	return []process{
		{name: "etcd", args: func(b *Bed) []string {
			return []string{"etcd", "--name", "bed", "--data-dir", b.path("etcd"),
				"--listen-client-urls", "http://127.0.0.1:2379", "--advertise-client-urls", "http://127.0.0.1:2379",
				"--listen-peer-urls", "http://127.0.0.1:2380", "--initial-advertise-peer-urls", "http://127.0.0.1:2380",
				"--initial-cluster", "bed=http://127.0.0.1:2380", "--listen-metrics-urls", "http://127.0.0.1:2381"}
		}},
		{name: "kube-apiserver", args: func(b *Bed) []string {
			pki := b.path("pki")
			return []string{"kube-apiserver", "--advertise-address", nodeAddr, "--secure-port", "6443",
				"--etcd-servers", "http://127.0.0.1:2379",
				"--client-ca-file", pki + "/ca.crt",
				"--tls-cert-file", pki + "/apiserver.crt", "--tls-private-key-file", pki + "/apiserver.key",
				"--kubelet-client-certificate", pki + "/apiserver-kubelet-client.crt",
				"--kubelet-client-key", pki + "/apiserver-kubelet-client.key",
				"--kubelet-certificate-authority", pki + "/ca.crt",
				"--kubelet-preferred-address-types", "InternalIP",
				"--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
				"--service-account-key-file", pki + "/sa.pub", "--service-account-signing-key-file", pki + "/sa.key",
				"--service-cluster-ip-range", serviceCIDR,
				"--authorization-mode", "Node,RBAC", "--enable-admission-plugins", "NodeRestriction",
				"--allow-privileged", "--profiling=false"}
		}, ready: func(ctx context.Context, b *Bed) error {
			return waitFor(ctx, "the API server", 90*time.Second, func() error {
				_, err := b.kubectl(ctx, "get", "--raw", "/readyz")
				return err
			})
		}},
		{name: "kube-controller-manager", args: func(b *Bed) []string {
			pki, kc := b.path("pki"), b.path("controller-manager.kubeconfig")
			return []string{"kube-controller-manager", "--kubeconfig", kc,
				"--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
				"--service-account-private-key-file", pki + "/sa.key", "--root-ca-file", pki + "/ca.crt",
				"--cluster-signing-cert-file", pki + "/ca.crt", "--cluster-signing-key-file", pki + "/ca.key",
				"--use-service-account-credentials", "--leader-elect=false", "--bind-address", "127.0.0.1",
				"--service-cluster-ip-range", serviceCIDR}
		}},
		{name: "kube-scheduler", args: func(b *Bed) []string {
			kc := b.path("scheduler.kubeconfig")
			return []string{"kube-scheduler", "--kubeconfig", kc, "--authentication-kubeconfig", kc,
				"--authorization-kubeconfig", kc, "--leader-elect=false", "--bind-address", "127.0.0.1"}
		}},
		{name: "containerd", args: func(b *Bed) []string {
			return []string{"containerd", "--config", b.path("containerd.toml")}
		}, ready: func(ctx context.Context, b *Bed) error {
			if err := waitFor(ctx, "containerd", 30*time.Second, socketReady(b.containerdSocket())); err != nil {
				return err
			}
			// The sandbox and DNS images must be there before the
			// kubelet starts pods: there is no registry to pull from.
			if err := b.LoadImage(ctx, pauseImage, "pause", nil); err != nil {
				return err
			}
			return b.LoadImage(ctx, corednsImage, "coredns", nil)
		}},
		{name: "kubelet", args: func(b *Bed) []string {
			return []string{"kubelet", "--config", b.path("kubelet.yaml"), "--kubeconfig", b.path("kubelet.kubeconfig"),
				"--hostname-override", nodeName, "--node-ip", nodeAddr, "--root-dir", b.path("kubelet")}
		}, ready: func(ctx context.Context, b *Bed) error {
			return waitFor(ctx, "the node", 90*time.Second, func() error {
				out, err := b.kubectl(ctx, "get", "node", nodeName, "-o", `jsonpath={.status.conditions[?(@.type=="Ready")].status}`)
				if err == nil && out != "True" {
					err = fmt.Errorf("node condition Ready is %q", out)
				}
				return err
			})
		}},
		{name: "kube-proxy", args: func(b *Bed) []string {
			return []string{"kube-proxy", "--config", b.path("kube-proxy.yaml")}
		}},
	}
}

func (b *Bed) containerdSocket() string { return b.path("containerd", "containerd.sock") }

// writeConfigs writes the kubeconfigs and every component's configuration.
func (b *Bed) writeConfigs() error {
	pki := b.path("pki")
	files := map[string]string{
		"admin.kubeconfig":              kubeconfig(pki, "admin"),
		"controller-manager.kubeconfig": kubeconfig(pki, "controller-manager"),
		"scheduler.kubeconfig":          kubeconfig(pki, "scheduler"),
		"kubelet.kubeconfig":            kubeconfig(pki, "kubelet-client"),
		"kube-proxy.kubeconfig":         kubeconfig(pki, "kube-proxy"),
		"containerd.toml":               b.containerdConfig(),
		"kubelet.yaml":                  b.kubeletConfig(),
		"kube-proxy.yaml":               b.kubeProxyConfig(),
		"cni/net.d/10-k8sbed.conflist":  b.cniConfig(),
		// The node has no DNS of its own; pods with dnsPolicy Default
		// get none either.
		"resolv.conf": "",
	}
	for name, content := range files {
		if err := os.MkdirAll(b.path(dirOf(name)), 0o700); err != nil {
			return err
		}
		if err := os.WriteFile(b.path(name), []byte(content), 0o600); err != nil {
			return err
		}
	}
	return nil
}

func dirOf(name string) string {
	if i := strings.LastIndex(name, "/"); i >= 0 {
		return name[:i]
	}
	return ""
}

// containerdConfig: state under the bed's directory; Debian's runc; the
// bed's CNI config; the locally built pause image as the sandbox; and
// restrict_oom_score_adj, since root here cannot lower oom scores (every
// sandbox would fail to start).
func (b *Bed) containerdConfig() string {
	return fmt.Sprintf(`version = 3
root = %[1]q
state = %[2]q

[grpc]
  address = %[3]q

[plugins.'io.containerd.cri.v1.images']
  snapshotter = 'overlayfs'
  [plugins.'io.containerd.cri.v1.images'.pinned_images]
    sandbox = %[4]q

[plugins.'io.containerd.cri.v1.runtime']
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins.'io.containerd.cri.v1.runtime'.containerd]
    default_runtime_name = 'runc'
    [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
      runtime_type = 'io.containerd.runc.v2'
      [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
        BinaryName = '/usr/sbin/runc'
        SystemdCgroup = false
  [plugins.'io.containerd.cri.v1.runtime'.cni]
    bin_dirs = ['/usr/lib/cni']
    conf_dir = %[5]q

[plugins.'io.containerd.grpc.v1.cri']
  stream_server_address = '127.0.0.1'
`, b.path("containerd", "root"), b.path("containerd", "state"), b.containerdSocket(), pauseImage, b.path("cni", "net.d"))
}

// kubeletConfig: cgroup v1 with cgroupfs (PID 1 is not systemd), no oom
// score lowering, serving certificate from the bed's CA, webhook
// authentication and authorization, cluster DNS.
func (b *Bed) kubeletConfig() string {
	pki := b.path("pki")
	return fmt.Sprintf(`apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
containerRuntimeEndpoint: unix://%[1]s
oomScoreAdj: 0
failSwapOn: false
authentication:
  anonymous: {enabled: false}
  webhook: {enabled: true}
  x509: {clientCAFile: %[2]s/ca.crt}
authorization: {mode: Webhook}
tlsCertFile: %[2]s/kubelet.crt
tlsPrivateKeyFile: %[2]s/kubelet.key
clusterDomain: cluster.local
clusterDNS: [%[3]s]
resolvConf: %[4]s
podLogsDir: %[5]s
readOnlyPort: 0
serializeImagePulls: false
imageGCHighThresholdPercent: 100
evictionHard: {memory.available: "100Mi", nodefs.available: "1%%", imagefs.available: "1%%"}
`, b.containerdSocket(), pki, dnsServiceIP, b.path("resolv.conf"), b.path("pod-logs"))
}

func (b *Bed) kubeProxyConfig() string {
	return fmt.Sprintf(`apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: nftables
clientConnection: {kubeconfig: %s}
hostnameOverride: %s
clusterCIDR: %s
metricsBindAddress: 127.0.0.1:10249
healthzBindAddress: 127.0.0.1:10256
conntrack: {maxPerCore: 0}
`, b.path("kube-proxy.kubeconfig"), nodeName, podCIDR)
}

// cniConfig: one bridge, addresses from the node's pod range, hairpin so
// a pod reaches itself through a service.
func (b *Bed) cniConfig() string {
	return fmt.Sprintf(`{
  "cniVersion": "1.0.0",
  "name": "k8sbed",
  "plugins": [{
    "type": "bridge", "bridge": "cni0", "isGateway": true, "ipMasq": false, "hairpinMode": true,
    "ipam": {"type": "host-local", "ranges": [[{"subnet": %q}]], "routes": [{"dst": "0.0.0.0/0"}], "dataDir": %q}
  }]
}
`, nodePodCIDR, b.path("cni", "ipam"))
}
