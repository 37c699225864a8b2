import Foundation
import Rendezvous
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
    /// Every frame after the handshake carries a MAC tag (AES-GCM) (hosts that do not trust the network).
    public var authenticateFrames = false
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

    /// How many restarts the launcher allows (TORCHELASTIC_MAX_RESTARTS).
    public var maxRestarts = 0
    /// The port ranks get as MASTER_PORT, for a program's own rendezvous (a PyTorch rank 0 hosts its
    /// TCPStore there); our store has its own port, in SWIFT_DDP_STORE_PORT.
    public var programPort = 0

    /// What local worker `local` is told (the one contract, WorkerEnvironment), plus torchrun's other
    /// variables so a PyTorch script runs unchanged.
    public func worker(local: Int, port: Int) -> WorkerEnvironment {
        var w = WorkerEnvironment()
        w.rank = nodeRank * localWorkers + local
        w.localRank = local; w.worldSize = worldSize; w.localWorldSize = localWorkers; w.groupRank = nodeRank
        w.masterAddress = masterAddress; w.masterPort = port; w.programPort = programPort
        w.secret = secret; w.jobID = jobID; w.timeoutSeconds = timeoutSeconds; w.restartCount = restartCount
        w.launcherPID = getpid(); w.authenticateFrames = authenticateFrames
        if local < placements.count, !placements[local].cpus.isEmpty {
            w.bindCPUs = compactList(placements[local].cpus); w.bindNode = placements[local].node; w.bindMemory = placements[local].bindMemory
        }
        return w
    }

    public func environment(local: Int, port: Int, base: [String: String]) -> [String: String] {
        var env = base
        let w = worker(local: local, port: port)
        env.merge(w.variables()) { _, new in new }
        env["GROUP_WORLD_SIZE"] = String(nodes)
        env["ROLE_RANK"] = String(w.rank)
        env["ROLE_WORLD_SIZE"] = String(worldSize)
        env["ROLE_NAME"] = "default"
        env["TORCHELASTIC_RESTART_COUNT"] = String(restartCount)
        env["TORCHELASTIC_MAX_RESTARTS"] = String(maxRestarts)
        env["TORCHELASTIC_RUN_ID"] = jobID
        // Each PyTorch rank 0 hosts its own store on MASTER_PORT (ours speaks another protocol).
        env["TORCHELASTIC_USE_AGENT_STORE"] = "False"
        // torchrun's default: one OpenMP thread per rank unless the user says otherwise.
        if env["OMP_NUM_THREADS"] == nil { env["OMP_NUM_THREADS"] = "1" }
        for (k, v) in extraEnvironment { env[k] = v }
        return env
    }
}

/// The job secret a launcher was given, from (in this order) `--secret`, `--secret-file` or the
/// launcher's own SWIFT_DDP_SECRET; nil when none (a one-node job then makes a fresh one). A file must be
/// a regular file that only its owner can read (no group or other permission bits), as ssh insists for
/// keys: `--secret` shows the secret to every local user in `ps` for as long as the job runs.
public func sharedSecret(option: String?, file: String?, environment: [String: String]) throws -> [UInt8]? {
    func decode(_ text: String, from source: String) throws -> [UInt8] {
        let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
        guard trimmed.count >= 32, let bytes = hexBytes(trimmed) else {
            throw LaunchError("\(source): the secret must be at least 16 bytes as hex (e.g. od -An -tx1 -N16 /dev/urandom | tr -d ' \\n')")
        }
        return bytes
    }
    if let option { return try decode(option, from: "--secret") }
    if let file {
        do { return try readSecretFile(file) } catch let error as SecretFileError { throw LaunchError("--secret-file \(error.message)") }
    }
    if let text = environment["SWIFT_DDP_SECRET"], !text.isEmpty { return try decode(text, from: "SWIFT_DDP_SECRET") }
    return nil
}
