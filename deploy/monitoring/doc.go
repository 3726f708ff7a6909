// Package monitoring holds what operators load into their monitoring, as
// files: Prometheus alert rules (alerts.yaml, with promtool unit tests in
// alerts_test.yaml) and a Grafana dashboard (dashboard.json). It has no
// code; its tests check that every PromQL expression in them parses
// (promtool) and names only metrics the agent exports.
package monitoring
