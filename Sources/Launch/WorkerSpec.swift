import Foundation
import Topology

/// What the launcher starts: `localWorkers` copies of one command on this node, node `nodeRank` of
/// `nodes`, rendezvousing at the master's store.
public struct LaunchSpec: Sendable {
    public var command: [String]
    public var localWorkers: Int
    public var nodes = 1
    public var nodeRank = 0
    public var masterAddress = "127.0.0.1"
    public var masterPort = 0
    public var logDirectory: String?
    public var jobID: String
    public var secret: [UInt8]
    public var timeoutSeconds: Double = 30
    /// Seconds between SIGTERM and SIGKILL when the group is torn down.
    public var gracePeriod: Double = 5
    public var extraEnvironment: [String: String] = [:]
    /// Per local rank: CPUs, node and whether memory is bound (empty: no binding).
    public var placements: [RankPlacement] = []
    /// Which attempt this is (0: first start); ranks see it as SWIFT_DDP_RESTART_COUNT.
    public var restartCount = 0

    public init(command: [String], localWorkers: Int, jobID: String, secret: [UInt8]) {
        self.command = command; self.localWorkers = localWorkers; self.jobID = jobID; self.secret = secret
    }

    public var worldSize: Int { nodes * localWorkers }

    /// torchrun's variables for local worker `local`, plus the job's secret and id.
    public func environment(local: Int, port: Int, base: [String: String]) -> [String: String] {
        var env = base
        env["RANK"] = String(nodeRank * localWorkers + local)
        env["LOCAL_RANK"] = String(local)
        env["WORLD_SIZE"] = String(worldSize)
        env["LOCAL_WORLD_SIZE"] = String(localWorkers)
        env["GROUP_RANK"] = String(nodeRank)
        env["MASTER_ADDR"] = masterAddress
        env["MASTER_PORT"] = String(port)
        env["SWIFT_DDP_SECRET"] = secret.map { String(format: "%02x", $0) }.joined()
        env["SWIFT_DDP_JOB_ID"] = jobID
        env["SWIFT_DDP_TIMEOUT"] = String(timeoutSeconds)
        env["SWIFT_DDP_LAUNCHER_PID"] = String(getpid())
        env["SWIFT_DDP_RESTART_COUNT"] = String(restartCount)
        if local < placements.count, !placements[local].cpus.isEmpty {
            env["SWIFT_DDP_BIND_CPUS"] = compactList(placements[local].cpus)
            env["SWIFT_DDP_BIND_NODE"] = placements[local].node.map(String.init) ?? ""
            env["SWIFT_DDP_BIND_MEMORY"] = placements[local].bindMemory ? "1" : "0"
        }
        for (k, v) in extraEnvironment { env[k] = v }
        return env
    }
}
