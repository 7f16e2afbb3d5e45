package localmesh

import (
	"context"
	"net/http"
	"reflect"
	"sort"
	"strconv"
	"time"

	"github.com/trellis-mesh/trellis/internal/catalog"
	"github.com/trellis-mesh/trellis/internal/netpolicy"
	"github.com/trellis-mesh/trellis/internal/nft"
	"github.com/trellis-mesh/trellis/internal/unixapi"
)

// PolicySnapshot is one version of what the node agent enforces; the agent
// decodes it as a nodeagent.Snapshot (the same JSON).
type PolicySnapshot struct {
	Version uint64          `json:"version"`
	Input   netpolicy.Input `json:"input"`
}

// NetworkPolicyStatus is one policy as `trellis get networkpolicies` shows it.
type NetworkPolicyStatus struct {
	Namespace     string    `json:"namespace"`
	Name          string    `json:"name"`
	PodSelector   string    `json:"podSelector"`
	Types         []string  `json:"policyTypes"`
	DeniedIngress uint64    `json:"deniedIngressPackets"`
	DeniedEgress  uint64    `json:"deniedEgressPackets"`
	Created       time.Time `json:"created"`
}

// policyTable is the node agent's nftables table.
func (r *Runtime) policyTable() string { return r.cfg.Prefix + "-netpol" }

// updatePolicyInputLocked recomputes what the node agent needs and, when it
// changed, bumps the version and wakes waiting agents.
func (r *Runtime) updatePolicyInputLocked() {
	in := netpolicy.Input{Namespaces: map[string]map[string]string{"default": nil}, Policies: r.desired.NetworkPolicies()}
	for _, ns := range r.desired.Namespaces() {
		in.Namespaces[ns.Name] = ns.Labels
	}
	for _, p := range r.pods {
		pod := netpolicy.Pod{Namespace: p.obj.Namespace, Name: p.obj.Name, IP: p.ip, Labels: p.obj.Labels}
		for _, c := range p.obj.Spec.Containers {
			pod.Ports = append(pod.Ports, c.Ports...)
		}
		in.Pods = append(in.Pods, pod)
	}
	sort.Slice(in.Pods, func(i, j int) bool { return in.Pods[i].IP.Less(in.Pods[j].IP) })
	if r.policyVersion > 0 && reflect.DeepEqual(in, r.policyInput) {
		return
	}
	r.policyVersion++
	r.policyInput = in
	close(r.policyChanged)
	r.policyChanged = make(chan struct{})
}

// servePolicy answers GET /v1/policy?after=V&wait=MS: the current snapshot
// once its version is newer than V, or after waiting up to MS milliseconds.
func (r *Runtime) servePolicy(w http.ResponseWriter, req *http.Request) {
	after, _ := strconv.ParseUint(req.URL.Query().Get("after"), 10, 64)
	waitMS, _ := strconv.Atoi(req.URL.Query().Get("wait"))
	wait := min(time.Duration(waitMS)*time.Millisecond, 30*time.Second)
	r.mu.Lock()
	changed := r.policyChanged
	newer := r.policyVersion > after
	r.mu.Unlock()
	if !newer && wait > 0 {
		ctx, cancel := context.WithTimeout(req.Context(), wait)
		select {
		case <-changed:
		case <-ctx.Done():
		}
		cancel()
	}
	r.mu.Lock()
	snap := PolicySnapshot{Version: r.policyVersion, Input: r.policyInput}
	r.mu.Unlock()
	unixapi.WriteJSON(w, http.StatusOK, snap)
}

// NetworkPolicies lists the policies with their denial counters.
func (r *Runtime) NetworkPolicies() []NetworkPolicyStatus {
	counts, _ := nft.DeniedCounts(nft.Table{Name: r.policyTable()})
	r.mu.Lock()
	defer r.mu.Unlock()
	out := []NetworkPolicyStatus{}
	for _, np := range r.desired.NetworkPolicies() {
		st := NetworkPolicyStatus{
			Namespace: np.Namespace, Name: np.Name, PodSelector: formatSelector(np.PodSelector),
			DeniedIngress: counts["in."+np.Namespace+"."+np.Name],
			DeniedEgress:  counts["out."+np.Namespace+"."+np.Name],
			Created:       r.created[catalog.Ref{Kind: catalog.KindNetworkPolicy, Namespace: np.Namespace, Name: np.Name}],
		}
		if np.Ingress {
			st.Types = append(st.Types, "Ingress")
		}
		if np.Egress {
			st.Types = append(st.Types, "Egress")
		}
		out = append(out, st)
	}
	return out
}

// formatSelector renders a label selector as kubectl describes one.
func formatSelector(s catalog.LabelSelector) string {
	out := ""
	if len(s.MatchLabels) > 0 {
		out = catalog.FormatLabels(s.MatchLabels)
	}
	for _, e := range s.MatchExpressions {
		if out != "" {
			out += ","
		}
		out += e.Key + " " + e.Operator
		if len(e.Values) > 0 {
			out += " (" + joinComma(e.Values) + ")"
		}
	}
	if out == "" {
		return "<all pods>"
	}
	return out
}

func joinComma(vals []string) string {
	s := ""
	for i, v := range vals {
		if i > 0 {
			s += ","
		}
		s += v
	}
	return s
}
