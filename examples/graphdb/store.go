package graphdb

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"

	"github.com/trellis-mesh/trellis/examples/graphdb/graphpb"
)

// store is alpha's in-memory graph. Safe for concurrent use.
// errExists: a load names a node that exists already.
var errExists = errors.New("exists already")

type store struct {
	mu     sync.RWMutex
	nodes  map[uint64]*node  // guarded by mu
	byName map[string]uint64 // guarded by mu: name -> uid
}

type node struct {
	uid        uint64
	typ, name  string
	attributes map[string]string
	out, in    map[string][]uint64 // predicate -> neighbours
}

func newStore() *store {
	return &store{nodes: map[uint64]*node{}, byName: map[string]uint64{}}
}

// check validates a load before zero is asked for anything: every node
// has a ref, a type and a name not already taken (in the request or the
// store); every edge names a predicate and ends it can find.
func (s *store) check(req *graphpb.LoadRequest) error {
	s.mu.RLock()
	defer s.mu.RUnlock()
	refs, names := map[string]bool{}, map[string]bool{}
	for i, n := range req.GetNodes() {
		switch {
		case n.GetRef() == "" || n.GetType() == "" || n.GetName() == "":
			return fmt.Errorf("node %d: ref, type and name are all required", i)
		case refs[n.GetRef()]:
			return fmt.Errorf("node %d: ref %q is used twice", i, n.GetRef())
		case names[n.GetName()] || s.byName[n.GetName()] != 0:
			return fmt.Errorf("node %d: a node named %q %w", i, n.GetName(), errExists)
		}
		refs[n.GetRef()], names[n.GetName()] = true, true
	}
	for i, e := range req.GetEdges() {
		if e.GetPredicate() == "" || strings.HasPrefix(e.GetPredicate(), "~") {
			return fmt.Errorf("edge %d: a predicate is required and must not start with ~", i)
		}
		for _, end := range []string{e.GetFrom(), e.GetTo()} {
			if !refs[end] && s.byName[end] == 0 {
				return fmt.Errorf("edge %d: %q is neither a ref in this request nor the name of a node", i, end)
			}
		}
	}
	return nil
}

// add stores a checked load whose nodes get the uids from firstUID on.
// It reports the uid per ref and the edges added.
func (s *store) add(req *graphpb.LoadRequest, firstUID uint64) (map[string]uint64, int32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	uids := map[string]uint64{}
	for i, n := range req.GetNodes() {
		if s.byName[n.GetName()] != 0 {
			return nil, 0, fmt.Errorf("node %d: a node named %q was added meanwhile", i, n.GetName())
		}
		uid := firstUID + uint64(i)
		uids[n.GetRef()] = uid
		s.byName[n.GetName()] = uid
		s.nodes[uid] = &node{uid: uid, typ: n.GetType(), name: n.GetName(), attributes: n.GetAttributes(),
			out: map[string][]uint64{}, in: map[string][]uint64{}}
	}
	resolve := func(end string) uint64 {
		if uid, ok := uids[end]; ok {
			return uid
		}
		return s.byName[end]
	}
	for _, e := range req.GetEdges() {
		from, to := s.nodes[resolve(e.GetFrom())], s.nodes[resolve(e.GetTo())]
		from.out[e.GetPredicate()] = append(from.out[e.GetPredicate()], to.uid)
		to.in[e.GetPredicate()] = append(to.in[e.GetPredicate()], from.uid)
	}
	return uids, int32(len(req.GetEdges())), nil
}

// Query selects nodes by type or by name and follows one predicate from
// each: "starring" goes from a film to its characters, "~starring" back.
type Query struct {
	Type   string `json:"type,omitempty"`
	Name   string `json:"name,omitempty"`
	Follow string `json:"follow,omitempty"`
}

// Result is one node a query found.
type Result struct {
	UID        uint64            `json:"uid"`
	Type       string            `json:"type"`
	Name       string            `json:"name"`
	Attributes map[string]string `json:"attributes,omitempty"`
	Linked     []Result          `json:"linked,omitempty"` // along Follow, sorted by name
}

// query answers q, nodes sorted by name. An empty query is an error.
func (s *store) query(q Query) ([]Result, error) {
	if q.Type == "" && q.Name == "" {
		return nil, fmt.Errorf(`a query needs "type" or "name", e.g. {"name": "A New Hope", "follow": "starring"}`)
	}
	s.mu.RLock()
	defer s.mu.RUnlock()
	var out []Result
	for _, n := range s.nodes {
		if (q.Type != "" && n.typ != q.Type) || (q.Name != "" && n.name != q.Name) {
			continue
		}
		r := n.result()
		if q.Follow != "" {
			next := n.out[q.Follow]
			if p, ok := strings.CutPrefix(q.Follow, "~"); ok {
				next = n.in[p]
			}
			for _, uid := range next {
				r.Linked = append(r.Linked, s.nodes[uid].result())
			}
			sortByName(r.Linked)
		}
		out = append(out, r)
	}
	sortByName(out)
	return out, nil
}

func (n *node) result() Result {
	return Result{UID: n.uid, Type: n.typ, Name: n.name, Attributes: n.attributes}
}

func sortByName(rs []Result) {
	slices.SortFunc(rs, func(a, b Result) int { return strings.Compare(a.Name, b.Name) })
}

func (s *store) size() int {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return len(s.nodes)
}
