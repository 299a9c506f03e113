package membership

import "github.com/prometheus/client_golang/prometheus"

var (
	membersDesc = prometheus.NewDesc("vxfabric_gossip_members", "Gossip members known to this member, by role and state.", []string{"role", "state"}, nil)
	healthDesc  = prometheus.NewDesc("vxfabric_gossip_health_score", "memberlist's health awareness score of this member (0 is healthy).", nil, nil)
)

// Collector exports the member counts by role and state, and the health score.
func (m *Member) Collector() prometheus.Collector { return collector{m} }

type collector struct{ m *Member }

func (c collector) Describe(ch chan<- *prometheus.Desc) {
	ch <- membersDesc
	ch <- healthDesc
}

func (c collector) Collect(ch chan<- prometheus.Metric) {
	counts := map[[2]string]int{}
	for _, role := range []Role{RoleAgent, RoleServer} {
		for _, st := range []State{StateAlive, StateSuspect, StateDead, StateLeft} {
			counts[[2]string{string(role), st.String()}] = 0
		}
	}
	for _, p := range c.m.Members() {
		counts[[2]string{string(p.Meta.Role), p.State.String()}]++
	}
	for k, n := range counts {
		ch <- prometheus.MustNewConstMetric(membersDesc, prometheus.GaugeValue, float64(n), k[0], k[1])
	}
	ch <- prometheus.MustNewConstMetric(healthDesc, prometheus.GaugeValue, float64(c.m.HealthScore()))
}
