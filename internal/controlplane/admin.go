package controlplane

import (
	"encoding/json"
	"errors"
	"net/http"
	"net/http/pprof"
	"sort"
	"time"

	"github.com/trellis-mesh/trellis/internal/ca"
	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// The admin API on the state directory's Unix socket (mode 0600), for the
// CLI. JSON in and out; errors are {"error": "..."} with a 4xx status.
//
//	GET  /v1/proxies                     []push.ProxyStatus
//	GET  /v1/ca                          CAStatus
//	POST /v1/ca/rotate  RotateRequest -> CAStatus
//	GET  /debug/pprof/...                Go's profiler

// CAStatus describes the authority and where root rotation stands.
type CAStatus struct {
	Phase  string `json:"phase"`
	Signer string `json:"signer"` // SHA-256 of the signing certificate
	// Bundle lists the trusted roots' SHA-256s.
	Bundle        []string `json:"bundle"`
	BundleVersion string   `json:"bundleVersion"`
	// RenewIssuedBefore: certificates issued before it must be renewed.
	RenewIssuedBefore time.Time `json:"renewIssuedBefore,omitzero"`
}

// RotateRequest names a rotation step: prepare, activate or finish.
type RotateRequest struct {
	Step string `json:"step"`
}

func (p *plane) adminMux() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/proxies", p.proxiesHandler)
	mux.HandleFunc("GET /v1/ca", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, p.caStatus()) })
	mux.HandleFunc("POST /v1/ca/rotate", func(w http.ResponseWriter, r *http.Request) {
		var req RotateRequest
		if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, 1<<10)).Decode(&req); err != nil {
			unixapi.WriteError(w, http.StatusBadRequest, "bad request body: "+err.Error())
			return
		}
		if err := p.rotate(req.Step); err != nil {
			unixapi.WriteError(w, http.StatusConflict, err.Error())
			return
		}
		unixapi.WriteJSON(w, http.StatusOK, p.caStatus())
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	return mux
}

// proxiesHandler answers with every proxy's status, by namespace and pod.
func (p *plane) proxiesHandler(w http.ResponseWriter, _ *http.Request) {
	st := p.push.Status()
	sort.Slice(st, func(i, j int) bool {
		return st[i].Namespace+"/"+st[i].Pod < st[j].Namespace+"/"+st[j].Pod
	})
	unixapi.WriteJSON(w, http.StatusOK, st)
}

func (p *plane) caStatus() CAStatus {
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	auth := p.keeper.Authority()
	st := CAStatus{Phase: p.keeper.Phase(), Signer: ca.Fingerprint(auth.SigningCert()), BundleVersion: bundleVersion(auth)}
	for _, c := range auth.Bundle() {
		st.Bundle = append(st.Bundle, ca.Fingerprint(c))
	}
	if p.renewBefore > 0 {
		st.RenewIssuedBefore = time.Unix(p.renewBefore, 0)
	}
	return st
}

// rotate takes one step of root rotation and pushes its result: the new
// bundle (prepare, finish), or the demand that every certificate issued
// so far be renewed (activate).
func (p *plane) rotate(step string) error {
	if p.kube != nil {
		return errors.New("on Kubernetes every replica must take the step: rotate with `trellis ca rotate --kubernetes`")
	}
	p.rotMu.Lock()
	defer p.rotMu.Unlock()
	if err := p.rotateLocked(step); err != nil {
		return err
	}
	p.publishBundleLocked()
	return nil
}

// rotateLocked takes one step in the keeper, and records when the new root
// started signing; the caller stores and publishes the result.
func (p *plane) rotateLocked(step string) error {
	var err error
	switch step {
	case "prepare":
		err = p.keeper.Prepare()
	case "activate":
		if err = p.keeper.Activate(); err == nil {
			p.renewBefore = p.keeper.ActivatedAt().Unix() + 1 // whole seconds: everything issued up to then
		}
	case "finish":
		err = p.keeper.Finish()
	default:
		return errUnknownStep(step)
	}
	return err
}

type errUnknownStep string

func (e errUnknownStep) Error() string {
	return "unknown rotation step " + string(e) + ": use prepare, activate or finish"
}
