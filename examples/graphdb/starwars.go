package graphdb

import "github.com/trellis-mesh/trellis/examples/graphdb/graphpb"

// StarWars is the demo's dataset: films, their directors and characters,
// with "starring" and "directed_by" edges from each film. Loaded in one
// request, it costs one call from alpha to zero.
func StarWars() *graphpb.LoadRequest {
	req := &graphpb.LoadRequest{}
	add := func(ref, typ, name string, attrs map[string]string) {
		req.Nodes = append(req.Nodes, &graphpb.Node{Ref: ref, Type: typ, Name: name, Attributes: attrs})
	}
	films := []struct {
		ref, name, year, director string
		cast                      []string
	}{
		{"anh", "A New Hope", "1977", "lucas", []string{"luke", "leia", "han", "vader", "obiwan", "chewie", "r2", "c3po"}},
		{"esb", "The Empire Strikes Back", "1980", "kershner", []string{"luke", "leia", "han", "vader", "yoda", "lando", "chewie", "r2", "c3po"}},
		{"rotj", "Return of the Jedi", "1983", "marquand", []string{"luke", "leia", "han", "vader", "yoda", "lando", "palpatine", "chewie", "r2", "c3po"}},
		{"tpm", "The Phantom Menace", "1999", "lucas", []string{"obiwan", "quigon", "padme", "anakin", "yoda", "palpatine", "r2", "c3po"}},
	}
	people := [][2]string{
		{"luke", "Luke Skywalker"}, {"leia", "Leia Organa"}, {"han", "Han Solo"}, {"vader", "Darth Vader"},
		{"obiwan", "Obi-Wan Kenobi"}, {"yoda", "Yoda"}, {"lando", "Lando Calrissian"}, {"palpatine", "Palpatine"},
		{"chewie", "Chewbacca"}, {"r2", "R2-D2"}, {"c3po", "C-3PO"}, {"quigon", "Qui-Gon Jinn"},
		{"padme", "Padmé Amidala"}, {"anakin", "Anakin Skywalker"},
	}
	for _, p := range people {
		add(p[0], "Character", p[1], nil)
	}
	for _, d := range [][2]string{{"lucas", "George Lucas"}, {"kershner", "Irvin Kershner"}, {"marquand", "Richard Marquand"}} {
		add(d[0], "Director", d[1], nil)
	}
	for _, f := range films {
		add(f.ref, "Film", f.name, map[string]string{"release_year": f.year})
		req.Edges = append(req.Edges, &graphpb.Edge{From: f.ref, Predicate: "directed_by", To: f.director})
		for _, c := range f.cast {
			req.Edges = append(req.Edges, &graphpb.Edge{From: f.ref, Predicate: "starring", To: c})
		}
	}
	return req
}
