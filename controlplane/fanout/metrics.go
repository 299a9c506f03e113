package fanout

import "github.com/prometheus/client_golang/prometheus"

type metrics struct {
	streams         prometheus.Gauge
	snapshotWaiting prometheus.Gauge
	messages        prometheus.Counter
	snapshots       prometheus.Counter
	overflows       prometheus.Counter
	loads           prometheus.Counter
	statusWrites    prometheus.Counter
	revision        prometheus.Gauge
	convergence     prometheus.Histogram
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		streams: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vxfabric_fanout_streams", Help: "Sync streams currently connected.",
		}),
		snapshotWaiting: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vxfabric_fanout_snapshot_waiting", Help: "Sync streams waiting for a slot to build and send a snapshot (Config.MaxSnapshots).",
		}),
		messages: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vxfabric_fanout_messages_sent_total", Help: "SyncResponse messages sent, snapshots included.",
		}),
		snapshots: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vxfabric_fanout_snapshots_sent_total", Help: "Snapshot SyncResponse messages sent.",
		}),
		overflows: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vxfabric_fanout_backlog_overflows_total", Help: "Stream backlogs dropped for a snapshot because the agent read too slowly.",
		}),
		loads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vxfabric_fanout_loads_total", Help: "Full loads of the store (start, and after watch compaction).",
		}),
		statusWrites: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "vxfabric_fanout_port_status_writes_total", Help: "Writes of status/ports keys from agent reports.",
		}),
		revision: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "vxfabric_fanout_revision", Help: "Store revision the fan-out hub reflects.",
		}),
		convergence: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "vxfabric_fanout_convergence_seconds",
			Help:    "Time from the hub seeing a revision that changed a node's view to that node's agent reporting it applied.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
	}
	reg.MustRegister(m.streams, m.snapshotWaiting, m.messages, m.snapshots, m.overflows, m.loads, m.statusWrites, m.revision, m.convergence)
	return m
}
