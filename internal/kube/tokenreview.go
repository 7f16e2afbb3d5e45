package kube

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/identity"
)

// TokenAudience is the audience of the projected service-account token an
// injected sidecar trades for its first certificate: a token the API
// server issued for anything else (the pod's default token included) is
// refused.
const TokenAudience = "trellis"

// The extra fields the API server sets on a token bound to a pod.
const (
	extraPodName = "authentication.kubernetes.io/pod-name"
	extraPodUID  = "authentication.kubernetes.io/pod-uid"
)

// TokenAttestor proves a first certificate request with the API server's
// TokenReview: the token must be a bound service-account token for
// audience TokenAudience, of the pod named in the request, whose service
// account is the one the requested identity names, and the pod must exist
// with the UID the token was bound to (a deleted pod's token, or one of a
// pod since replaced under the same name, is refused).
type TokenAttestor struct {
	Client      kubernetes.Interface
	TrustDomain string
}

var _ ca.Attestor = (*TokenAttestor)(nil)

// Attest implements ca.Attestor; the pod's UID is the one the token was
// bound to. A token may be presented more than once
// while it is valid (a restarted sidecar asks again); it is bound to one
// pod and audience and readable only by that pod's sidecar.
func (a *TokenAttestor) Attest(ctx context.Context, token, namespace, name string, want identity.ID, _ string) (string, error) {
	tr, err := a.Client.AuthenticationV1().TokenReviews().Create(ctx, &authnv1.TokenReview{
		Spec: authnv1.TokenReviewSpec{Token: token, Audiences: []string{TokenAudience}},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("%w (TokenReview: %v)", ca.ErrNotReady, err)
	}
	st := tr.Status
	if !st.Authenticated {
		reason := st.Error
		if reason == "" {
			reason = "not authenticated"
		}
		return "", fmt.Errorf("the API server refused the token: %s (a sidecar presents its projected token of audience %q)", reason, TokenAudience)
	}
	if !slices.Contains(st.Audiences, TokenAudience) {
		return "", fmt.Errorf("the token is not for audience %q", TokenAudience)
	}
	ns, sa, ok := serviceAccountOf(st.User.Username)
	if !ok {
		return "", fmt.Errorf("the token belongs to %q, not to a service account", st.User.Username)
	}
	podName, podUID := first(st.User.Extra[extraPodName]), first(st.User.Extra[extraPodUID])
	if podName == "" || podUID == "" {
		return "", errors.New("the token is not bound to a pod (use the projected token the injector mounts)")
	}
	if ns != namespace || podName != name {
		return "", fmt.Errorf("the token is pod %s/%s's, not %s/%s's", ns, podName, namespace, name)
	}
	got, err := identity.ForWorkload(a.TrustDomain, ns, sa)
	if err != nil {
		return "", err
	}
	if got != want {
		return "", fmt.Errorf("the token is service account %s/%s's (%s), not %s's", ns, sa, got, want)
	}
	pod, err := a.Client.CoreV1().Pods(ns).Get(ctx, podName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("pod %s/%s no longer exists", ns, podName)
	}
	if err != nil {
		return "", fmt.Errorf("%w (get pod: %v)", ca.ErrNotReady, err)
	}
	if string(pod.UID) != podUID {
		return "", fmt.Errorf("the token was bound to an earlier pod named %s/%s", ns, podName)
	}
	if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
		return "", fmt.Errorf("pod %s/%s has finished", ns, podName)
	}
	if psa := cmp.Or(pod.Spec.ServiceAccountName, "default"); psa != sa {
		return "", fmt.Errorf("pod %s/%s runs as service account %s, not %s", ns, podName, psa, sa)
	}
	return podUID, nil
}

// serviceAccountOf splits "system:serviceaccount:NS:NAME".
func serviceAccountOf(user string) (ns, name string, ok bool) {
	rest, ok := strings.CutPrefix(user, "system:serviceaccount:")
	if !ok {
		return "", "", false
	}
	ns, name, ok = strings.Cut(rest, ":")
	return ns, name, ok && ns != "" && name != ""
}

func first(v authnv1.ExtraValue) string {
	if len(v) == 0 {
		return ""
	}
	return v[0]
}
