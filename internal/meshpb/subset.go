package meshpb

// Selects reports whether endpoint e is in subset s: its labels include
// every one of s's, with the same value. A subset without labels selects
// every endpoint.
func (s *Subset) Selects(e *Endpoint) bool {
	for k, v := range s.GetLabels() {
		if got, ok := e.GetLabels()[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// SubsetNamed is s's subset called name; nil when it has none.
func (s *Service) SubsetNamed(name string) *Subset {
	for _, sub := range s.GetSubsets() {
		if sub.GetName() == name {
			return sub
		}
	}
	return nil
}

// Select is the endpoints of eps that s selects, in eps's order.
func (s *Subset) Select(eps []*Endpoint) []*Endpoint {
	var out []*Endpoint
	for _, e := range eps {
		if s.Selects(e) {
			out = append(out, e)
		}
	}
	return out
}
