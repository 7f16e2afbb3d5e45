package localmesh

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/manifest"
	"github.com/trellis-mesh/trellis/internal/safehttp"
	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// The API a running mesh serves on the state directory's Unix socket (mode
// 0600, so only root reaches it). JSON in and out; errors are
// {"error": "..."} with a 4xx or 5xx status.
//
//	GET  /v1/status                     Status
//	GET  /v1/namespaces                 []NamespaceStatus
//	GET  /v1/pods                       []PodStatus
//	GET  /v1/services                   []ServiceStatus
//	GET  /v1/networkpolicies            []NetworkPolicyStatus
//	GET  /v1/routes                     []RouteStatus
//	GET  /v1/destinationrules           []DestinationRuleStatus
//	GET  /v1/policy?after=V&wait=MS     PolicySnapshot, once newer than V (long poll)
//	POST /v1/apply   ManifestRequest -> ApplyResult
//	POST /v1/delete  ManifestRequest -> ApplyResult
//	POST /v1/shutdown                   stops the mesh, as Ctrl-C does
//	POST /v1/control-plane  ControlPlaneRequest -> Status   stops or starts the control plane

// Status describes the running mesh.
type Status struct {
	PID         int    `json:"pid"`
	AgentPID    int    `json:"nodeAgentPID,omitempty"`
	ControlPID  int    `json:"controlPlanePID,omitempty"`
	Ready       bool   `json:"ready"`
	StateDir    string `json:"stateDir"`
	PodCIDR     string `json:"podCIDR"`
	ServiceCIDR string `json:"serviceCIDR"`
}

// NamespaceStatus is one namespace.
type NamespaceStatus struct {
	Name    string            `json:"name"`
	Labels  map[string]string `json:"labels,omitempty"`
	Created time.Time         `json:"created"`
}

// PodStatus is one pod as `trellis get pods` shows it.
type PodStatus struct {
	Namespace  string            `json:"namespace"`
	Name       string            `json:"name"`
	Labels     map[string]string `json:"labels,omitempty"`
	IP         string            `json:"ip"`
	Netns      string            `json:"netns,omitempty"`
	Node       string            `json:"node,omitempty"`     // on a cluster (trellis get --kubernetes)
	HostLink   string            `json:"hostLink,omitempty"` // host side of the pod's veth
	Ready      bool              `json:"ready"`
	Phase      string            `json:"phase"`
	Created    time.Time         `json:"created"`
	Containers []ContainerStatus `json:"containers"`
}

// ServiceStatus is one service with its VIP and ready endpoints.
type ServiceStatus struct {
	Namespace string                `json:"namespace"`
	Name      string                `json:"name"`
	ClusterIP string                `json:"clusterIP"`
	Selector  map[string]string     `json:"selector,omitempty"`
	Ports     []catalog.ServicePort `json:"ports"`
	Endpoints []string              `json:"endpoints"`
	Created   time.Time             `json:"created"`
}

// ControlPlaneRequest starts (Running) or stops the control plane.
type ControlPlaneRequest struct {
	Running bool `json:"running"`
}

// ManifestRequest carries manifest files from the CLI to the mesh.
type ManifestRequest struct {
	Sources []manifest.Source `json:"sources"`
}

type apiServer struct {
	srv *http.Server
	ln  net.Listener
}

// Close stops the server, letting in-flight requests (the shutdown request
// itself, say) finish their responses for up to 5 seconds.
func (a *apiServer) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return a.srv.Shutdown(ctx)
}

// serveAPI serves the API on the state directory's socket until closed.
func (r *Runtime) serveAPI() (*apiServer, error) {
	path := filepath.Join(r.cfg.StateDir, socketFile)
	ln, err := unixapi.Listen(path) // replaces a stale socket: the lock proves no one serves it
	if err != nil {
		return nil, err
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /v1/status", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, r.status()) })
	mux.HandleFunc("POST /v1/control-plane", func(w http.ResponseWriter, req *http.Request) {
		var body ControlPlaneRequest
		if err := json.NewDecoder(io.LimitReader(req.Body, 1<<10)).Decode(&body); err != nil {
			unixapi.WriteError(w, http.StatusBadRequest, "bad request body: "+err.Error())
			return
		}
		r.SetControlPlane(body.Running)
		unixapi.WriteJSON(w, http.StatusOK, r.status())
	})
	mux.HandleFunc("GET /v1/namespaces", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, r.Namespaces()) })
	mux.HandleFunc("GET /v1/pods", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, r.Pods()) })
	mux.HandleFunc("GET /v1/services", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, r.Services()) })
	mux.HandleFunc("GET /v1/networkpolicies", func(w http.ResponseWriter, _ *http.Request) {
		unixapi.WriteJSON(w, http.StatusOK, r.NetworkPolicies())
	})
	mux.HandleFunc("GET /v1/routes", func(w http.ResponseWriter, _ *http.Request) { unixapi.WriteJSON(w, http.StatusOK, r.Routes()) })
	mux.HandleFunc("GET /v1/destinationrules", func(w http.ResponseWriter, _ *http.Request) {
		unixapi.WriteJSON(w, http.StatusOK, r.DestinationRules())
	})
	mux.HandleFunc("GET /v1/policy", r.servePolicy)
	mux.HandleFunc("POST /v1/apply", r.manifestHandler(r.Apply))
	mux.HandleFunc("POST /v1/delete", r.manifestHandler(r.Delete))
	mux.HandleFunc("POST /v1/shutdown", func(w http.ResponseWriter, _ *http.Request) {
		unixapi.WriteJSON(w, http.StatusAccepted, struct{}{})
		r.Shutdown()
	})
	srv := safehttp.Server(mux)
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			slog.Error("API server", "err", err)
		}
	}()
	return &apiServer{srv: srv, ln: ln}, nil
}

func (r *Runtime) status() Status {
	return Status{PID: os.Getpid(), AgentPID: r.agent.status().PID, ControlPID: r.control.status().PID, Ready: r.ready.Load(),
		StateDir: r.cfg.StateDir, PodCIDR: r.cfg.PodCIDR.String(), ServiceCIDR: r.cfg.ServiceCIDR.String()}
}

// maxManifestBytes bounds an apply or delete request.
const maxManifestBytes = 8 << 20

func (r *Runtime) manifestHandler(do func([]manifest.Source) (ApplyResult, error)) http.HandlerFunc {
	return func(w http.ResponseWriter, req *http.Request) {
		var body ManifestRequest
		dec := json.NewDecoder(io.LimitReader(req.Body, maxManifestBytes))
		if err := dec.Decode(&body); err != nil {
			unixapi.WriteError(w, http.StatusBadRequest, "bad request body: "+err.Error())
			return
		}
		res, err := do(body.Sources)
		if err != nil {
			unixapi.WriteError(w, http.StatusUnprocessableEntity, err.Error())
			return
		}
		unixapi.WriteJSON(w, http.StatusOK, res)
	}
}

// Namespaces lists the declared namespaces, "default" included.
func (r *Runtime) Namespaces() []NamespaceStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []NamespaceStatus{}
	seenDefault := false
	for _, ns := range r.desired.Namespaces() {
		seenDefault = seenDefault || ns.Name == "default"
		out = append(out, NamespaceStatus{Name: ns.Name, Labels: ns.Labels,
			Created: r.created[catalog.Ref{Kind: catalog.KindNamespace, Name: ns.Name}]})
	}
	if !seenDefault {
		out = append(out, NamespaceStatus{Name: "default"})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out
}

// Pods lists the pods, running and terminating, by namespace and name.
func (r *Runtime) Pods() []PodStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []PodStatus{}
	for _, p := range r.pods {
		ps := PodStatus{Namespace: p.obj.Namespace, Name: p.obj.Name, Labels: p.obj.Labels,
			IP: p.ip.String(), Netns: p.net.Netns, HostLink: p.net.HostLink, Ready: p.ready(), Created: p.created}
		for _, c := range p.containers {
			ps.Containers = append(ps.Containers, c.status())
		}
		ps.Phase = podPhase(p, ps.Containers)
		out = append(out, ps)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}

// podPhase is the STATUS column of kubectl get pods.
func podPhase(p *pod, cs []ContainerStatus) string {
	if p.terminating.Load() {
		return "Terminating"
	}
	done, failed := 0, 0
	for _, c := range cs {
		switch {
		case c.State == stateWaiting && c.Reason != "":
			return c.Reason
		case c.State == stateTerminated:
			done++
			if c.Reason == "Error" {
				failed++
			}
		}
	}
	switch {
	case done == len(cs) && failed > 0:
		return "Error"
	case done == len(cs):
		return "Completed"
	}
	return "Running"
}

// Services lists the services with their VIPs and ready endpoints.
func (r *Runtime) Services() []ServiceStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []ServiceStatus{}
	for _, svc := range r.desired.Services() {
		ss := ServiceStatus{Namespace: svc.Namespace, Name: svc.Name, Selector: svc.Selector, Ports: svc.Ports,
			Created:   r.created[catalog.Ref{Kind: catalog.KindService, Namespace: svc.Namespace, Name: svc.Name}],
			Endpoints: []string{}}
		if vip, ok := r.vips[svc.Namespace+"/"+svc.Name]; ok {
			ss.ClusterIP = vip.String()
		}
		for _, sp := range svc.Ports {
			for _, ep := range r.endpointsLocked(svc, sp) {
				ss.Endpoints = append(ss.Endpoints, fmt.Sprintf("%s:%d", ep.Addr, ep.Port))
			}
		}
		out = append(out, ss)
	}
	return out
}
