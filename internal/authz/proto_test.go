package authz

import (
	"reflect"
	"testing"
)

// Every field of a rule survives the trip through the config, so a field
// added to the spec and forgotten in the config fails here rather than
// matching everything in the proxy.
func TestProtoKeepsEveryField(t *testing.T) {
	var r Rule
	r.From = []From{{Source: filled[Source]()}}
	r.To = []To{{Operation: filled[Operation]()}}
	r.When = []Condition{filled[Condition]()}
	in := []Policy{{Namespace: "db", Name: "p", DryRun: true, Spec: Spec{Action: Deny, Rules: []Rule{r, {}}}}}
	if out := FromProto(ToProto(in)); !reflect.DeepEqual(out, in) {
		t.Errorf("after the config:\n%+v\nwant\n%+v", out, in)
	}
}

// filled returns a T whose string and []string fields hold their names.
func filled[T any]() T {
	var v T
	rv := reflect.ValueOf(&v).Elem()
	for i := range rv.NumField() {
		name := rv.Type().Field(i).Name
		switch f := rv.Field(i); f.Kind() {
		case reflect.String:
			f.SetString(name)
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{name, name + "2"}))
		}
	}
	return v
}
