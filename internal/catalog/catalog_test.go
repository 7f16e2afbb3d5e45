package catalog

import "testing"

func TestSelectorMatches(t *testing.T) {
	tests := []struct {
		name        string
		sel, labels map[string]string
		want        bool
	}{
		{"subset", map[string]string{"app": "a"}, map[string]string{"app": "a", "v": "1"}, true},
		{"value differs", map[string]string{"app": "a"}, map[string]string{"app": "b"}, false},
		{"key missing", map[string]string{"app": "a"}, nil, false},
		{"empty selector selects nothing", nil, map[string]string{"app": "a"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := SelectorMatches(tt.sel, tt.labels); got != tt.want {
				t.Errorf("SelectorMatches(%v, %v) = %v, want %v", tt.sel, tt.labels, got, tt.want)
			}
		})
	}
}

func TestResolveTargetPort(t *testing.T) {
	p := &Pod{Spec: PodSpec{Containers: []Container{
		{Ports: []ContainerPort{{Name: "http", Port: 8080, Protocol: TCP}}},
		{Ports: []ContainerPort{{Name: "dns", Port: 53, Protocol: UDP}}},
	}}}
	tests := []struct {
		sp     ServicePort
		want   int32
		wantOK bool
	}{
		{ServicePort{TargetPort: 9000, Protocol: TCP}, 9000, true},
		{ServicePort{TargetPortName: "http", Protocol: TCP}, 8080, true},
		{ServicePort{TargetPortName: "dns", Protocol: UDP}, 53, true},
		{ServicePort{TargetPortName: "dns", Protocol: TCP}, 0, false}, // protocol must match
		{ServicePort{TargetPortName: "grpc", Protocol: TCP}, 0, false},
	}
	for _, tt := range tests {
		got, ok := tt.sp.ResolveTargetPort(p)
		if got != tt.want || ok != tt.wantOK {
			t.Errorf("ResolveTargetPort(%+v) = %d, %v; want %d, %v", tt.sp, got, ok, tt.want, tt.wantOK)
		}
	}
}

func TestRefAndLabels(t *testing.T) {
	if got := (Ref{Kind: KindService, Namespace: "db", Name: "alpha"}).String(); got != "Service db/alpha" {
		t.Errorf("Ref.String() = %q", got)
	}
	if got := (Ref{Kind: KindNamespace, Name: "db"}).String(); got != "Namespace db" {
		t.Errorf("Ref.String() = %q", got)
	}
	if got := FormatLabels(map[string]string{"b": "2", "a": "1"}); got != "a=1,b=2" {
		t.Errorf("FormatLabels() = %q, want a=1,b=2", got)
	}
}
