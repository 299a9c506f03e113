package nodeagent

import (
	"context"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/vxfabric/vxfabric/overlay"
)

type metrics struct {
	appliedRevision   prometheus.Gauge
	desiredRevision   prometheus.Gauge
	reconcileDuration prometheus.Histogram
	reconcileErrors   prometheus.Counter
	remotePorts       prometheus.Gauge
	withheldPorts     prometheus.Gauge
	localPorts        prometheus.Gauge
	pluggedPorts      prometheus.Gauge
	syncReconnects    prometheus.Counter
	staleRefused      prometheus.Counter
	invalidObjects    prometheus.Gauge
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		appliedRevision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_applied_revision",
			Help: "Store revision of the desired state last applied to the kernel."}),
		desiredRevision: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_desired_revision",
			Help: "Store revision of the desired state last received from the control plane."}),
		reconcileDuration: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "vxfabric_agent_reconcile_duration_seconds",
			Help: "Duration of one Apply of the desired state.", Buckets: prometheus.ExponentialBuckets(0.0005, 2, 16)}),
		reconcileErrors: prometheus.NewCounter(prometheus.CounterOpts{Name: "vxfabric_agent_reconcile_errors_total",
			Help: "Apply passes that failed (fully or for some objects)."}),
		remotePorts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_remote_ports",
			Help: "Remote ports (unicast FDB entries) in the applied state."}),
		withheldPorts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_withheld_remote_ports",
			Help: "Remote ports withheld because their node is dead (per gossip, or per the control plane when gossip does not know it)."}),
		localPorts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_local_ports",
			Help: "Local ports in the desired state."}),
		pluggedPorts: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_plugged_ports",
			Help: "Local ports whose interface exists and is plugged into its bridge."}),
		syncReconnects: prometheus.NewCounter(prometheus.CounterOpts{Name: "vxfabric_agent_sync_reconnects_total",
			Help: "Sync streams that ended and were opened again."}),
		staleRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "vxfabric_agent_stale_state_refused_total",
			Help: "Sync messages refused because their revision is older than one already applied."}),
		invalidObjects: prometheus.NewGauge(prometheus.GaugeOpts{Name: "vxfabric_agent_invalid_objects",
			Help: "Objects of the desired state that cannot be programmed and were skipped."}),
	}
	if reg != nil {
		reg.MustRegister(m.appliedRevision, m.desiredRevision, m.reconcileDuration, m.reconcileErrors, m.remotePorts,
			m.withheldPorts, m.localPorts, m.pluggedPorts, m.syncReconnects, m.staleRefused, m.invalidObjects)
	}
	return m
}

// portDropCollector exports the frames port security dropped per local port, read from the
// datapath at each scrape when it counts them (overlay.DropCounter).
type portDropCollector struct {
	a    *Agent
	desc *prometheus.Desc
}

func newPortDropCollector(a *Agent) portDropCollector {
	return portDropCollector{a: a, desc: prometheus.NewDesc("vxfabric_agent_port_security_dropped_frames_total",
		"Frames a local port sent that port security dropped (a source MAC, ARP sender or IPv4 source not its own).",
		[]string{"port", "interface"}, nil)}
}

func (c portDropCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

func (c portDropCollector) Collect(ch chan<- prometheus.Metric) {
	dc, ok := c.a.cfg.Datapath.(overlay.DropCounter)
	if !ok {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	drops, err := dc.PortDrops(ctx)
	if err != nil {
		// Left out of this scrape; an invalid metric would fail the whole scrape.
		c.a.log.Warn("cannot read the port security drop counts", "err", err)
		return
	}
	c.a.mu.Lock()
	defer c.a.mu.Unlock()
	for iface, n := range drops {
		if id, ok := c.a.watched[iface]; ok { // a port gone: its count goes with the next pass
			ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(n), id, iface)
		}
	}
}
