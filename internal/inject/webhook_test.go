package inject

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// review posts an AdmissionReview for pod to the webhook over a real
// socket and returns the response.
func review(t *testing.T, srv *httptest.Server, pod *corev1.Pod) *admissionv1.AdmissionResponse {
	t.Helper()
	raw, _ := json.Marshal(pod)
	in := admissionv1.AdmissionReview{TypeMeta: metav1.TypeMeta{APIVersion: "admission.k8s.io/v1", Kind: "AdmissionReview"},
		Request: &admissionv1.AdmissionRequest{UID: "u-1", Kind: metav1.GroupVersionKind{Version: "v1", Kind: "Pod"},
			Namespace: "shop", Operation: admissionv1.Create, Object: runtime.RawExtension{Raw: raw}}}
	body, _ := json.Marshal(in)
	resp, err := http.Post(srv.URL+"/inject", "application/json", bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var out admissionv1.AdmissionReview
	if err := json.NewDecoder(resp.Body).Decode(&out); err != nil || out.Response == nil {
		t.Fatalf("response: %v", err)
	}
	if out.Response.UID != "u-1" || out.APIVersion != "admission.k8s.io/v1" {
		t.Errorf("response names uid %q, apiVersion %q", out.Response.UID, out.APIVersion)
	}
	return out.Response
}

// applyPatch applies the webhook's "add" operations on top-level fields.
func applyPatch(t *testing.T, pod *corev1.Pod, patch []byte) *corev1.Pod {
	t.Helper()
	var ops []struct {
		Op, Path string
		Value    json.RawMessage
	}
	if err := json.Unmarshal(patch, &ops); err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(pod)
	var doc map[string]any
	_ = json.Unmarshal(raw, &doc)
	for _, op := range ops {
		parts := strings.Split(strings.TrimPrefix(op.Path, "/"), "/")
		if op.Op != "add" || len(parts) != 2 {
			t.Fatalf("unexpected patch operation %s %s", op.Op, op.Path)
		}
		parent, _ := doc[parts[0]].(map[string]any)
		if parent == nil {
			parent = map[string]any{}
			doc[parts[0]] = parent
		}
		var v any
		_ = json.Unmarshal(op.Value, &v)
		parent[parts[1]] = v
	}
	raw, _ = json.Marshal(doc)
	var out corev1.Pod
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestWebhook: the patch the webhook answers with turns the pod into what
// Pod makes of it; a skipped pod gets no patch; a pod that cannot be
// meshed is refused with the reason; junk is a 400.
func TestWebhook(t *testing.T) {
	var outcomes []string
	srv := httptest.NewServer(&Webhook{Config: func() Config { return testConfig }, OnReview: func(o string) { outcomes = append(outcomes, o) }})
	defer srv.Close()

	pod := loadPod(t, "testdata/pod.yaml")
	pod.Namespace = "" // as a Deployment's pods arrive
	resp := review(t, srv, pod)
	if !resp.Allowed || resp.PatchType == nil || *resp.PatchType != admissionv1.PatchTypeJSONPatch {
		t.Fatalf("response = %+v, want allowed with a JSON patch", resp)
	}
	want := pod.DeepCopy()
	if err := Pod(want, "shop", testConfig); err != nil {
		t.Fatal(err)
	}
	got := applyPatch(t, pod, resp.Patch)
	gotJSON, _ := json.Marshal(got)
	wantJSON, _ := json.Marshal(want)
	if !bytes.Equal(gotJSON, wantJSON) {
		t.Errorf("patched pod:\n%s\nwant:\n%s", gotJSON, wantJSON)
	}

	if resp := review(t, srv, got); !resp.Allowed || resp.Patch != nil {
		t.Errorf("an injected pod again: %+v, want allowed without a patch", resp)
	}
	bad := pod.DeepCopy()
	bad.Annotations["traffic.sidecar.istio.io/excludeInboundPorts"] = "99999"
	if resp := review(t, srv, bad); resp.Allowed || resp.Result == nil || !strings.Contains(resp.Result.Message, "99999") {
		t.Errorf("a bad annotation: %+v, want refused naming it", resp)
	}
	if strings.Join(outcomes, ",") != "injected,skipped,refused" {
		t.Errorf("outcomes = %v", outcomes)
	}

	r, err := http.Post(srv.URL+"/inject", "application/json", strings.NewReader("{not json"))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusBadRequest {
		t.Errorf("junk: status %d, want 400", r.StatusCode)
	}
}
