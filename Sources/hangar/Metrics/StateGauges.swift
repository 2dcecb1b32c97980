import CoreMetrics
import HangarNATS
import HangarNode
import HangarScheduler
import HangarShared

/// Gauges of current state, set right before each scrape.
enum StateGauges {
    /// What the scheduler sees: queue depth, running jobs, tenants, nodes as the scheduler holds them.
    static func scheduler(_ scheduler: Scheduler) async {
        let stats = await scheduler.stats()
        let cluster = await scheduler.clusterStatus()
        Gauge(label: "hangar_scheduler_term").record(Int64(clamping: cluster.schedulers.first?.term ?? 0))
        if let leading = cluster.schedulers.first?.logApplied, leading > 0 {
            Gauge(label: "hangar_store_log_applied").record(Int64(clamping: leading))
            for standby in cluster.schedulers.dropFirst() {
                let lag = leading > standby.logApplied ? leading - standby.logApplied : 0
                Gauge(label: "hangar_store_log_standby_lag", dimensions: [("holder", standby.holder)]).record(
                    Int64(clamping: lag)
                )
            }
        }
        for stream in cluster.streams where stream.error.isEmpty {
            let labels = [("stream", stream.name)]
            Gauge(label: "hangar_stream_messages", dimensions: labels).record(Int64(clamping: stream.messages))
            // A stream on one server that is not clustered has no leader to name, and takes publishes.
            let leaderless = stream.leader.isEmpty && stream.replicas > 1
            Gauge(label: "hangar_stream_has_leader", dimensions: labels).record(leaderless ? 0 : 1)
            for follower in stream.followers {
                let copy = labels + [("server", follower.server)]
                Gauge(label: "hangar_stream_replica_lag", dimensions: copy).record(Int64(clamping: follower.lag))
                Gauge(label: "hangar_stream_replica_offline", dimensions: copy).record(follower.offline ? 1 : 0)
            }
        }
        Gauge(label: "hangar_queue_depth").record(Int64(stats.queueDepth))
        Gauge(label: "hangar_jobs_running").record(Int64(stats.running))
        for tenant in stats.tenants {
            let labels = [("tenant", tenant.name)]
            Gauge(label: "hangar_tenant_running", dimensions: labels).record(Int64(tenant.running))
            Gauge(label: "hangar_tenant_queued", dimensions: labels).record(Int64(tenant.queued))
            Gauge(label: "hangar_tenant_dominant_share", dimensions: labels).record(tenant.dominantShare)
        }
        for node in stats.nodes {
            let labels = [("node_id", node.lastHeartbeat.nodeID)]
            Gauge(label: "hangar_node_up", dimensions: labels).record(node.state == .down ? 0 : 1)
            Gauge(label: "hangar_node_slots_reserved", dimensions: labels).record(Int64(node.slotsReserved))
            Gauge(label: "hangar_node_cpu_millis_reserved", dimensions: labels).record(Int64(node.cpuMillisReserved))
            Gauge(label: "hangar_node_cpu_millis_allocatable", dimensions: labels)
                .record(Int64(clamping: node.cpuMillisAllocatable))
            Gauge(label: "hangar_node_memory_bytes_reserved", dimensions: labels)
                .record(Int64(clamping: node.memoryBytesReserved))
        }
    }

    /// A node agent's own capacity and load, from the heartbeat it would send now.
    static func node(_ agent: NodeAgent) {
        let heartbeat = agent.currentHeartbeat()
        let capacity = heartbeat.capacity
        let labels = [("node_id", heartbeat.nodeID)]
        Gauge(label: "hangar_node_scheduler_term_seen", dimensions: labels)
            .record(Int64(clamping: agent.termFence.highestSeen))
        Gauge(label: "hangar_node_slots_total", dimensions: labels).record(Int64(capacity.slotsTotal))
        Gauge(label: "hangar_node_slots_used", dimensions: labels).record(Int64(capacity.slotsUsed))
        Gauge(label: "hangar_node_cpu_millis", dimensions: labels).record(Int64(capacity.cpuMillis))
        Gauge(label: "hangar_node_cpu_millis_used", dimensions: labels).record(Int64(capacity.cpuMillisUsed))
        Gauge(label: "hangar_node_memory_bytes", dimensions: labels).record(Int64(clamping: capacity.memoryBytes))
        Gauge(label: "hangar_node_memory_bytes_used", dimensions: labels)
            .record(Int64(clamping: capacity.memoryBytesUsed))
        for pool in heartbeat.pools {
            let poolLabels = labels + [("runtime", pool.runtime), ("template", pool.template)]
            Gauge(label: "hangar_pool_ready", dimensions: poolLabels).record(Int64(pool.ready))
            Gauge(label: "hangar_pool_warming", dimensions: poolLabels).record(Int64(pool.warming))
            Gauge(label: "hangar_pool_max", dimensions: poolLabels).record(Int64(pool.max))
            Gauge(label: "hangar_pool_target", dimensions: poolLabels).record(Int64(pool.target))
            Gauge(label: "hangar_pool_served_warm", dimensions: poolLabels).record(Int64(clamping: pool.servedWarm))
        }
    }

    /// Reconnects of each of this process's NATS connections since it started.
    static func nats(_ connections: [NATSConnection]) {
        for connection in connections {
            Gauge(label: "hangar_nats_reconnects", dimensions: [("connection", connection.options.name)])
                .record(Int64(connection.reconnectCount))
        }
    }
}
