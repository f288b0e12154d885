package pacer

import "github.com/prometheus/client_golang/prometheus"

// RegisterMetrics registers on reg, in namespace ns, gauges that read p's [Estimate] when
// scraped: the budget left at the last reading, the estimated rate of the org's other
// clients, and the pacer's own share of the last window.
func RegisterMetrics(reg prometheus.Registerer, ns string, p *Pacer) {
	gauge := func(name, help string, f func(Estimate) float64) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: ns, Name: name, Help: help},
			func() float64 { return f(p.Estimate()) })
	}
	reg.MustRegister(
		gauge("budget_left", "The org budget left at the last reading: the least x-ratelimit-remaining read of the current window; -1 before a reading.",
			func(e Estimate) float64 { return float64(e.Left) }),
		gauge("budget_limit", "The org budget per window, x-ratelimit-limit at the last reading; -1 before a reading.",
			func(e Estimate) float64 { return float64(e.Limit) }),
		gauge("budget_others_rate", "Estimated rate at which the org's other clients (other integrations, other deployments) spend the budget, in requests a second.",
			func(e Estimate) float64 { return e.OthersPerSecond }),
		gauge("budget_own_share", "The part of the last window's spent budget that this process spent, 0 to 1; -1 before a window has turned.",
			func(e Estimate) float64 { return e.OwnShare }),
	)
}
