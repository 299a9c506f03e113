package lab

import "testing"

func TestOutsideRouteHost(t *testing.T) {
	for _, c := range []struct {
		name, cur, prefer string
		hosts             []string
		want              string
	}{
		{"no route yet: the new VM's host", "", "h3", []string{"h1", "h3"}, "h3"},
		{"no route, no preference: the first host", "", "", []string{"h4", "h2"}, "h2"},
		{"the route's host keeps a port: it stays", "h1", "h3", []string{"h1", "h3"}, "h1"},
		{"the route's host has none left: the VM's new host", "h1", "h3", []string{"h2", "h3"}, "h3"},
		{"the route's host has none left, the preferred neither: the first", "h1", "h5", []string{"h4", "h2"}, "h2"},
		{"no port on any host: no route", "h1", "h1", nil, ""},
	} {
		if got := outsideRouteHost(c.cur, c.hosts, c.prefer); got != c.want {
			t.Errorf("%s: outsideRouteHost(%q, %v, %q) = %q, want %q", c.name, c.cur, c.hosts, c.prefer, got, c.want)
		}
	}
}
