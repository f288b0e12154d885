package main

import (
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// versionCmd prints the version.
type versionCmd struct{}

func (c *versionCmd) Help() string {
	return `Prints the version set at link time (-ldflags "-X main.version=v1.2.3"), or else the module's
version and the VCS revision and time Go recorded at build.

Examples:
  kustomer-worker version`
}

func (c *versionCmd) Run(e *env) error {
	_, err := fmt.Fprintf(e.stdout, "kustomer-worker %s\n", buildVersion())
	return err
}

// buildVersion is the version to print and report: the one set at link time, else the one Go
// recorded in the binary (the module's version for go install, or the VCS revision and time of
// a build in a checkout, "+dirty" with uncommitted changes).
func buildVersion() string {
	if version != "dev" {
		return version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return version
	}
	return versionOf(bi)
}

// versionOf reads a version from build information; see buildVersion.
func versionOf(bi *debug.BuildInfo) string {
	rev, when, dirty := buildVCS(bi)
	v := bi.Main.Version
	if v != "" && v != "(devel)" {
		return v
	}
	if rev == "" {
		return "dev"
	}
	if len(rev) > 12 {
		rev = rev[:12]
	}
	v = "dev-" + rev
	if dirty {
		v += "+dirty"
	}
	if when != "" {
		v += " (" + when + ")"
	}
	return v
}

// buildVCS returns the VCS revision, its time and whether the tree had changes, as recorded by
// go build; empty when the binary was built outside a checkout.
func buildVCS(bi *debug.BuildInfo) (revision, time string, modified bool) {
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			revision = s.Value
		case "vcs.time":
			time = s.Value
		case "vcs.modified":
			modified = s.Value == "true"
		}
	}
	return revision, time, modified
}

// buildRevision is the VCS revision recorded in the binary, or "unknown".
func buildRevision() string {
	if bi, ok := debug.ReadBuildInfo(); ok {
		if rev, _, _ := buildVCS(bi); rev != "" {
			return rev
		}
	}
	return "unknown"
}

// registerBuildInfo registers kustomer_worker_build_info: always 1, labelled with the version,
// the VCS revision and the Go version, to join on in queries ("which build runs where").
func registerBuildInfo(reg prometheus.Registerer) {
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: "kustomer_worker", Name: "build_info",
		Help: "Always 1; labelled with the version and VCS revision the binary was built from and its Go version.",
	}, []string{"version", "revision", "goversion"})
	g.WithLabelValues(buildVersion(), buildRevision(), runtime.Version()).Set(1)
	reg.MustRegister(g)
}
