package inject

import (
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"reflect"

	admissionv1 "k8s.io/api/admission/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// MaxReviewBytes bounds an AdmissionReview (the API server's own limit on
// an object is about 3 MiB).
const MaxReviewBytes = 4 << 20

// Webhook serves the mutating admission webhook at any path: each
// AdmissionReview for a pod is answered with a JSON patch that injects
// the sidecar, or with no patch when the pod is skipped. A pod that
// cannot be meshed as asked is refused with the reason (the API server
// shows it to whoever created the pod).
type Webhook struct {
	// Config is read for every review (the roots change on rotation).
	Config func() Config
	// OnReview, when set, observes each outcome: "injected", "skipped"
	// or "refused".
	OnReview func(outcome string)
}

func (h *Webhook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		http.Error(w, "POST an admission.k8s.io/v1 AdmissionReview", http.StatusMethodNotAllowed)
		return
	}
	var review admissionv1.AdmissionReview
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, MaxReviewBytes))
	if err := dec.Decode(&review); err != nil || review.Request == nil {
		http.Error(w, fmt.Sprintf("not an AdmissionReview with a request: %v", err), http.StatusBadRequest)
		return
	}
	req := review.Request
	resp := &admissionv1.AdmissionResponse{UID: req.UID, Allowed: true}
	patch, outcome, err := h.review(req)
	switch {
	case err != nil:
		resp.Allowed = false
		resp.Result = &metav1.Status{Status: metav1.StatusFailure, Code: http.StatusBadRequest, Reason: metav1.StatusReasonBadRequest,
			Message: "trellis sidecar injection: " + err.Error()}
	case patch != nil:
		pt := admissionv1.PatchTypeJSONPatch
		resp.Patch, resp.PatchType = patch, &pt
	}
	if h.OnReview != nil {
		h.OnReview(outcome)
	}
	slog.Debug("admission review", "namespace", req.Namespace, "name", req.Name, "outcome", outcome, "err", err)
	out := admissionv1.AdmissionReview{TypeMeta: review.TypeMeta, Response: resp}
	if out.APIVersion == "" {
		out.APIVersion, out.Kind = "admission.k8s.io/v1", "AdmissionReview"
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(&out)
}

func (h *Webhook) review(req *admissionv1.AdmissionRequest) ([]byte, string, error) {
	if req.Kind.Kind != "Pod" || req.Kind.Group != "" || req.Operation != admissionv1.Create {
		return nil, "skipped", nil
	}
	var pod corev1.Pod
	if err := json.Unmarshal(req.Object.Raw, &pod); err != nil {
		return nil, "refused", fmt.Errorf("the pod does not decode: %v", err)
	}
	orig := pod.DeepCopy()
	ns := req.Namespace
	if ns == "" {
		ns = pod.Namespace
	}
	var skipped *Skipped
	if err := Pod(&pod, ns, h.Config()); errors.As(err, &skipped) {
		return nil, "skipped", nil
	} else if err != nil {
		return nil, "refused", err
	}
	patch, err := Patch(orig, &pod)
	return patch, "injected", err
}

// Patch is the JSON patch (RFC 6902) that turns orig into pod: one "add"
// (which replaces an existing member) per top-level field injection
// changes.
func Patch(orig, pod *corev1.Pod) ([]byte, error) {
	type op struct {
		Op    string `json:"op"`
		Path  string `json:"path"`
		Value any    `json:"value"`
	}
	var ops []op
	for _, f := range []struct {
		path     string
		old, new any
	}{
		{"/metadata/annotations", orig.Annotations, pod.Annotations},
		{"/spec/initContainers", orig.Spec.InitContainers, pod.Spec.InitContainers},
		{"/spec/containers", orig.Spec.Containers, pod.Spec.Containers},
		{"/spec/volumes", orig.Spec.Volumes, pod.Spec.Volumes},
	} {
		if !reflect.DeepEqual(f.old, f.new) {
			ops = append(ops, op{"add", f.path, f.new})
		}
	}
	return json.Marshal(ops)
}
