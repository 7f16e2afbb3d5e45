package localmesh

import (
	"strings"
	"testing"
)

// Namespace and pod names with dashes in different places must never share
// a network namespace: one pod's clean-up would remove the other's.
func TestPodNetnsNameUnique(t *testing.T) {
	long := strings.Repeat("n", 200)
	pairs := [][2]string{
		{"a-b", "c"},
		{"a", "b-c"},
		{"a", "b.c"},
		{"default", "web-0"},
		{long, strings.Repeat("p", 200)},
		{long, strings.Repeat("p", 199) + "q"},
		{long + "x", strings.Repeat("p", 200)},
	}
	names := map[string][2]string{}
	links := map[string][2]string{}
	for _, pair := range pairs {
		name := podNetnsName("trellis", pair[0], pair[1])
		if other, ok := names[name]; ok {
			t.Errorf("podNetnsName(%q, %q) = %q, the same as for %q", pair[0], pair[1], name, other)
		}
		names[name] = pair
		for _, kind := range []string{resNetns, resHostsDir} {
			if err := checkResource(Resource{Kind: kind, Name: name}); err != nil {
				t.Errorf("podNetnsName(%q, %q) = %q: %v", pair[0], pair[1], name, err)
			}
		}
		if !strings.HasPrefix(name, "trellis-") {
			t.Errorf("podNetnsName(%q, %q) = %q, want the prefix first", pair[0], pair[1], name)
		}
		link := linkName("tv", name)
		if other, ok := links[link]; ok {
			t.Errorf("host link for %q = %s, the same as for %q", pair, link, other)
		}
		links[link] = pair
		if err := checkResource(Resource{Kind: resLink, Name: link}); err != nil {
			t.Errorf("host link for %q: %v", pair, err)
		}
	}
	if got, want := podNetnsName("trellis", "a-b", "c"), "trellis-a-b.c"; got != want {
		t.Errorf("podNetnsName(a-b, c) = %q, want %q", got, want)
	}
}
