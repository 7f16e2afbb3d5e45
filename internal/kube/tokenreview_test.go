package kube

import (
	"context"
	"os"
	"strings"
	"testing"
	"time"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/identity"
	"github.com/trellis-mesh/trellis/internal/kubeclient"
)

// testCluster connects to the real API server the Kubernetes tier gives
// in TRELLIS_TEST_KUBECONFIG (the test bed: test/k8sbed runs these tests
// against it), or skips.
func testCluster(t *testing.T) kubernetes.Interface {
	t.Helper()
	kc := os.Getenv("TRELLIS_TEST_KUBECONFIG")
	if kc == "" {
		t.Skip("needs a real API server: set TRELLIS_TEST_KUBECONFIG (the k8s tier of scripts/test.sh does)")
	}
	client, _, err := kubeclient.NewClient(kubeclient.Target{Kubeconfig: kc}, "trellis-test")
	if err != nil {
		t.Fatal(err)
	}
	return client
}

// TestTokenAttestor presents real tokens the API server issued to the CA's
// attestor: the bound token of the pod asking passes; another service
// account's identity, the wrong audience, a token bound to no pod, a
// deleted pod's token and another pod's token are refused, each with its
// reason.
func TestTokenAttestor(t *testing.T) {
	client := testCluster(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	ns := "attest-" + strings.ToLower(strings.ReplaceAll(time.Now().Format("150405.000"), ".", ""))
	if _, err := client.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = client.CoreV1().Namespaces().Delete(context.Background(), ns, metav1.DeleteOptions{}) })
	for _, sa := range []string{"a", "b"} {
		if _, err := client.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	pod := func(name string) *corev1.Pod {
		// Never scheduled (no node matches): a pod that exists is all a
		// bound token needs.
		p, err := client.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name},
			Spec: corev1.PodSpec{ServiceAccountName: "a", NodeSelector: map[string]string{"trellis.io/test": "never-scheduled"},
				Containers: []corev1.Container{{Name: "c", Image: "trellis.local/none:0"}}}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	token := func(sa string, aud string, bound *corev1.Pod) string {
		req := &authnv1.TokenRequest{Spec: authnv1.TokenRequestSpec{Audiences: []string{aud}}}
		if bound != nil {
			req.Spec.BoundObjectRef = &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: bound.Name, UID: bound.UID}
		}
		tr, err := client.CoreV1().ServiceAccounts(ns).CreateToken(ctx, sa, req, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return tr.Status.Token
	}
	p1, p2, gone := pod("p1"), pod("p2"), pod("gone")
	goneToken := token("a", TokenAudience, gone)
	zero := int64(0)
	if err := client.CoreV1().Pods(ns).Delete(ctx, "gone", metav1.DeleteOptions{GracePeriodSeconds: &zero}); err != nil {
		t.Fatal(err)
	}
	for i := 0; ; i++ {
		if _, err := client.CoreV1().Pods(ns).Get(ctx, "gone", metav1.GetOptions{}); err != nil {
			break
		}
		if i > 100 {
			t.Fatal("pod gone is not deleted")
		}
		time.Sleep(100 * time.Millisecond)
	}
	id := func(sa string) identity.ID {
		v, err := identity.ForWorkload("cluster.local", ns, sa)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	att := &TokenAttestor{Client: client, TrustDomain: "cluster.local"}
	for _, c := range []struct {
		name, token, pod string
		want             identity.ID
		refusal          string // "" passes
	}{
		{"its own bound token", token("a", TokenAudience, p1), "p1", id("a"), ""},
		{"another service account's identity", token("a", TokenAudience, p1), "p1", id("b"), "service account"},
		{"a token for another audience", token("a", "https://kubernetes.default.svc.cluster.local", p1), "p1", id("a"), "refused the token"},
		{"a token bound to no pod", token("a", TokenAudience, nil), "p1", id("a"), "not bound to a pod"},
		{"a deleted pod's token", goneToken, "gone", id("a"), "refused the token"},
		{"another pod's token", token("a", TokenAudience, p2), "p1", id("a"), "not " + ns + "/p1's"},
	} {
		uid, err := att.Attest(ctx, c.token, ns, c.pod, c.want, "")
		switch {
		case c.refusal == "" && err != nil:
			t.Errorf("%s: refused: %v", c.name, err)
		case c.refusal == "" && uid != string(p1.UID):
			t.Errorf("%s: attested pod UID %q, want p1's %q (the certificate names it)", c.name, uid, p1.UID)
		case c.refusal != "" && (err == nil || !strings.Contains(err.Error(), c.refusal)):
			t.Errorf("%s: Attest() = %v, want a refusal saying %q", c.name, err, c.refusal)
		default:
			t.Logf("%s: %v", c.name, err)
		}
	}
}
