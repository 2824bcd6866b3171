/*
 * statsd configuration for the graphiteapp/graphite-statsd image (mounted over
 * /opt/statsd/config/udp.js by examples/docker-compose.yml). The Graphite backend keeps the
 * legacy namespace (stats.*, stats_counts.*, stats.timers.*, stats.gauges.*) that
 * examples/grafana/cost-middleware.json queries, and timers get the p50/p90/p99
 * (upper_50, upper_90, upper_99) the latency panels read.
 */
{
  graphiteHost: "127.0.0.1",
  graphitePort: 2003,
  port: 8125,
  flushInterval: 10000,
  percentThreshold: [50, 90, 99],
  graphite: {
    legacyNamespace: true
  },
  servers: [
    { server: "./servers/udp", address: "0.0.0.0", port: 8125 }
  ]
}
