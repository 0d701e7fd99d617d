import InvalidationCore
import Logging
import RedisClient

// The Redis side: connect (a server, the master Sentinel names, or a cluster's masters), notice
// another master than before and replay, keep an idle connection proven alive, and report.
extension Worker {
    func connectRedis() {
        do {
            let target = try config.redis.open(timeoutMilliseconds: config.redisTimeoutMilliseconds, knownNodes: knownClusterNodes)
            let connection = try target.anyConnection()
            try ping(connection)
            if case .cluster(let cluster) = target {
                knownClusterNodes = cluster.topology.masters
                if cluster.topology.uncovered > 0 {
                    logger.warning("the cluster leaves slots without a master: keys there cannot be deleted until it heals", metadata: ["slots": "\(cluster.topology.uncovered)"])
                }
            }
            masterReached(target.master(runID: try runID(connection)))
            invalidator = RedisInvalidator(target: target, deleteCommand: config.deleteCommand, waitReplicas: config.redisWaitReplicas,
                                           waitMilliseconds: max(1, config.redisTimeoutMilliseconds / 2), lastAnswerAt: monotonicNanoseconds())
            redisPolicy.opened()
            // While Redis was away nothing was remembered of what notifications named.
            session?.active?.work.requestDrain()
            statistics.update { $0.redisConnects += 1 }
            logger.debug("redis connection opened", metadata: [LogKey.target: "\(config.redis)"])
        } catch {
            redisFailed(error)
        }
    }

    /// The server process's run_id, when INFO is allowed (nil otherwise: the address alone then
    /// tells masters apart).
    private func runID(_ connection: RedisConnection) throws(RedisError) -> String? {
        guard case .bulk(let text) = try connection.command([Array("INFO".utf8), Array("server".utf8)]) else { return nil }
        return RedisInfo.parse(String(decoding: text, as: UTF8.self)).runID
    }

    /// Another master than the last one (a Sentinel failover, a restart) may still hold keys
    /// whose deletion the previous one confirmed and never passed on: they are deleted again
    /// (`FailoverMemory`).
    private func masterReached(_ master: RedisMaster) {
        defer { redisMaster = master }
        guard let previous = redisMaster, master.replaces(previous) else { return }
        statistics.update { $0.redisMasterChanges += 1 }
        startReplay("redis is another master than before (a failover, or a restart): it may hold keys whose deletion the previous one confirmed without passing it on",
                    metadata: ["previous": "\(previous)", "master": "\(master)"])
    }

    func ping(_ connection: RedisConnection) throws(RedisError) {
        let reply = try connection.command([Array("PING".utf8)])
        guard reply == .status("PONG") else {
            if case .error(let message) = reply { throw RedisError(code: .commandFailed, message: "PING: \(message)", target: "\(config.redis)") }
            throw RedisError(code: .unexpectedReply, message: "PING answered \(reply)", target: "\(config.redis)")
        }
    }

    /// An idle Redis connection can be dead (a master killed, a failover) without anyone noticing
    /// until the next event; a PING finds out, and a failover's replay starts then.
    func redisHeartbeat() {
        guard let target = invalidator?.target else { return }
        do {
            try ping(try target.anyConnection())
            redisRoundTripSucceeded()
        } catch {
            redisFailed(error)
        }
    }

    func redisRoundTripSucceeded() {
        invalidator?.lastAnswerAt = monotonicNanoseconds()
        if case .cluster(let cluster)? = invalidator?.target, case let followed = cluster.takeRedirections(), followed > 0 {
            statistics.update { $0.redisRedirections += UInt64(followed) }
        }
        guard !redisPolicy.verified, invalidator != nil else { return }
        if case .cameUp(let failures, let downFor)? = redisPolicy.roundTripSucceeded(now: monotonicNanoseconds()) {
            var metadata: Logger.Metadata = [LogKey.target: "\(config.redis)"]
            if let redisMaster, config.redis.sentinel != nil || redisMaster.address.contains(",") { metadata["master"] = "\(redisMaster.address)" }
            addOutage(&metadata, failures: failures, downFor: downFor)
            logger.info("redis connected", metadata: metadata)
        }
    }

    func redisFailed(_ error: RedisError) {
        invalidator = nil
        session?.active?.work.requestDrain()
        statistics.update { $0.redisErrors += 1 }
        let what = error.code == .commandFailed ? "redis rejected the deletions" : "redis unavailable"
        report(redisPolicy.failed(now: monotonicNanoseconds(), connectionDropped: error.code == .connectionLost),
               server: "redis", what: what, consequence: "events wait in the log and are drained when it returns", error: "\(error)")
    }
}
