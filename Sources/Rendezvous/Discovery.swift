import FoundationEssentials
import Glibc

// Who started this rank, read from the environment in a fixed order (the first launcher whose variables
// are present wins; a partial set is an error naming what is missing):
//   1. our launcher (SWIFT_DDP_STORE_PORT) or torchrun (TORCHELASTIC_RUN_ID): RANK, WORLD_SIZE,
//      LOCAL_RANK, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT
//   2. Open MPI's mpirun: OMPI_COMM_WORLD_RANK/SIZE/LOCAL_RANK/LOCAL_SIZE
//   3. MPICH / Intel MPI (Hydra, PMI): PMI_RANK, PMI_SIZE, MPI_LOCALRANKID, MPI_LOCALNRANKS
//   4. Slurm's srun: SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_NODEID, the local size from
//      SLURM_STEP_TASKS_PER_NODE (or SLURM_TASKS_PER_NODE), the master = first host of
//      SLURM_STEP_NODELIST (or SLURM_JOB_NODELIST)
//   5. RANK and WORLD_SIZE set by hand or by Kubernetes (a Kubeflow PyTorchJob: one rank per pod)
// MPI comes before Slurm because mpirun inside a Slurm allocation is the more specific launcher; our
// launcher and torchrun come first because their children inherit every scheduler variable too.
// Except under our launcher (which hosts the store itself), rank 0 hosts the rendezvous store on
// the master port: MASTER_PORT (under torchrun MASTER_PORT + 1, since torchrun's agent store holds
// MASTER_PORT), else one derived from the job id, 15000 + its last four digits, as Lightning does.

public struct RankDiscovery: Sendable, Equatable {
    public enum Launcher: String, Sendable {
        case swiftDDP = "swift-ddp launcher", torchrun, openMPI = "Open MPI (mpirun)", pmi = "MPICH / Intel MPI (PMI)"
        case slurm = "Slurm (srun)", kubeflow = "Kubeflow PyTorchJob", environment = "RANK/WORLD_SIZE set by hand", none = "none (one process)"
    }
    public var launcher: Launcher
    public var rank = 0, worldSize = 1, localRank = 0, localWorldSize = 1, nodeRank = 0
    public var masterAddress = "127.0.0.1"
    public var masterPort = 0
    public var jobID: String?
    /// What each figure was read from, in order ("rank" <- "SLURM_PROCID").
    public var sources: [Source] = []
    public struct Source: Sendable, Equatable { public var field: String; public var from: String }
    /// Every launcher but ours leaves the store to rank 0.
    public var rankZeroHostsStore: Bool { launcher != .swiftDDP && launcher != .none }
    /// Ranks on more than one host (a loopback master means one host).
    public var isMultiHost: Bool { localWorldSize < worldSize && !isLoopback(masterAddress) }

    public init(launcher: Launcher) { self.launcher = launcher }

    /// One line per figure, for `ddp-train env`.
    public var lines: [String] {
        ["launcher: \(launcher.rawValue)"] + sources.map { "\($0.field): \(value(of: $0.field)) (from \($0.from))" }
    }

    func value(of field: String) -> String {
        switch field {
        case "rank": return String(rank)
        case "world size": return String(worldSize)
        case "local rank": return String(localRank)
        case "local world size": return String(localWorldSize)
        case "node rank": return String(nodeRank)
        case "master address": return masterAddress
        case "master port": return String(masterPort)
        case "job id": return jobID ?? "-"
        default: return "?"
        }
    }
}

public func isLoopback(_ host: String) -> Bool { host == "localhost" || host.hasPrefix("127.") || host == "::1" }

/// Reads the launcher's variables (see the order above).
public func discoverRank(_ env: [String: String]) throws -> RankDiscovery {
    func present(_ names: [String]) -> [String] { names.filter { env[$0].map { !$0.isEmpty } ?? false } }
    func requireAll(_ names: [String], _ who: String) throws {
        let missing = names.filter { !present([$0]).contains($0) }
        if !missing.isEmpty && missing.count < names.count {
            throw EnvironmentError(variable: missing.joined(separator: ", "),
                                   problem: "missing while \(present(names).joined(separator: ", ")) \(present(names).count == 1 ? "is" : "are") set (\(who) sets them all)")
        }
    }
    var d: RankDiscovery
    var reader = Reader(env: env)
    let torchNames = ["RANK", "WORLD_SIZE"]
    try requireAll(torchNames, "a launcher")
    if !present(torchNames).isEmpty && (env["SWIFT_DDP_STORE_PORT"] != nil || env["TORCHELASTIC_RUN_ID"] != nil) {
        d = RankDiscovery(launcher: env["SWIFT_DDP_STORE_PORT"] != nil ? .swiftDDP : .torchrun)
        try readTorchrun(&d, &reader, env)
    } else if !present(["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE"]).isEmpty {
        let names = ["OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK", "OMPI_COMM_WORLD_LOCAL_SIZE"]
        try requireAll(names, "mpirun")
        d = RankDiscovery(launcher: .openMPI)
        try readMPI(&d, &reader, names, jobVariables: ["OMPI_MCA_ess_base_jobid", "OMPI_MCA_orte_ess_jobid", "PMIX_NAMESPACE"])
    } else if !present(["PMI_RANK", "PMI_SIZE"]).isEmpty {
        try requireAll(["PMI_RANK", "PMI_SIZE"], "the MPI launcher")
        d = RankDiscovery(launcher: .pmi)
        try readMPI(&d, &reader, ["PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID", "MPI_LOCALNRANKS"], jobVariables: ["PMI_JOBID", "PMI_KVSNAME", "PMIX_NAMESPACE"])
    } else if !present(["SLURM_PROCID"]).isEmpty && !present(["SLURM_STEP_ID", "SLURM_STEPID"]).isEmpty {
        d = RankDiscovery(launcher: .slurm)
        try readSlurm(&d, &reader, env)
    } else if !present(torchNames).isEmpty {
        d = RankDiscovery(launcher: env["KUBERNETES_SERVICE_HOST"] != nil ? .kubeflow : .environment)
        try readTorchrun(&d, &reader, env)
    } else {
        return RankDiscovery(launcher: .none)
    }
    d.sources = reader.sources
    guard d.rank < d.worldSize else { throw EnvironmentError(variable: d.sources[0].from, problem: "rank \(d.rank) is not below the world size \(d.worldSize) (\(d.sources[1].from))") }
    guard d.localRank < d.localWorldSize, d.localWorldSize <= d.worldSize else {
        throw EnvironmentError(variable: d.sources[2].from, problem: "local rank \(d.localRank) of \(d.localWorldSize) on a node of a world of \(d.worldSize) (\(d.sources[3].from))")
    }
    if d.worldSize > 1 && d.masterPort == 0 {
        throw EnvironmentError(variable: "MASTER_PORT", problem: "required when WORLD_SIZE > 1 under \(d.launcher.rawValue) (no job id to derive a port from)")
    }
    return d
}

struct Reader {
    let env: [String: String]
    var sources: [RankDiscovery.Source] = []
    mutating func int(_ field: String, _ name: String, min: Int = 0) throws -> Int? {
        guard let text = env[name], !text.isEmpty else { return nil }
        guard let v = Int(text), v >= min else { throw EnvironmentError(variable: name, problem: "'\(text)' is not an integer >= \(min)") }
        sources.append(.init(field: field, from: name))
        return v
    }
    mutating func string(_ field: String, _ names: [String]) -> String? {
        for name in names { if let v = env[name], !v.isEmpty { sources.append(.init(field: field, from: name)); return v } }
        return nil
    }
    mutating func note(_ field: String, _ from: String) { sources.append(.init(field: field, from: from)) }
}

func readTorchrun(_ d: inout RankDiscovery, _ r: inout Reader, _ env: [String: String]) throws {
    d.rank = try r.int("rank", "RANK") ?? 0
    d.worldSize = try r.int("world size", "WORLD_SIZE", min: 1) ?? 1
    if let v = try r.int("local rank", "LOCAL_RANK") { d.localRank = v } else { d.localRank = 0; r.note("local rank", "default: one rank per host") }
    if let v = try r.int("local world size", "LOCAL_WORLD_SIZE", min: 1) { d.localWorldSize = v } else { d.localWorldSize = 1; r.note("local world size", "default: one rank per host") }
    d.nodeRank = try r.int("node rank", "GROUP_RANK") ?? d.rank / d.localWorldSize
    if d.worldSize > 1 {
        guard let address = r.string("master address", ["MASTER_ADDR"]) else {
            throw EnvironmentError(variable: "MASTER_ADDR", problem: "required when WORLD_SIZE > 1")
        }
        d.masterAddress = address
        let portVariable = env["SWIFT_DDP_STORE_PORT"] != nil ? "SWIFT_DDP_STORE_PORT" : "MASTER_PORT"
        guard let port = try r.int("master port", portVariable, min: 1) else {
            throw EnvironmentError(variable: "MASTER_PORT", problem: "required when WORLD_SIZE > 1")
        }
        guard port <= (d.launcher == .torchrun ? 65534 : 65535) else { throw EnvironmentError(variable: portVariable, problem: "\(port) is not a TCP port") }
        // torchrun's agent hosts its own store on MASTER_PORT.
        d.masterPort = d.launcher == .torchrun ? port + 1 : port
        if d.launcher == .torchrun { r.sources[r.sources.count - 1].from = "MASTER_PORT + 1 (torchrun's agent holds MASTER_PORT)" }
    }
    d.jobID = r.string("job id", ["SWIFT_DDP_JOB_ID", "TORCHELASTIC_RUN_ID"])
}

func readMPI(_ d: inout RankDiscovery, _ r: inout Reader, _ names: [String], jobVariables: [String]) throws {
    d.rank = try r.int("rank", names[0]) ?? 0
    d.worldSize = try r.int("world size", names[1], min: 1) ?? 1
    d.localRank = try r.int("local rank", names[2]) ?? 0
    d.localWorldSize = try r.int("local world size", names[3], min: 1) ?? 1
    d.nodeRank = d.rank / d.localWorldSize
    r.note("node rank", "rank / local world size")
    d.jobID = r.string("job id", ["SWIFT_DDP_JOB_ID"] + jobVariables)
    try readMaster(&d, &r, multiHostHint: "mpirun -x MASTER_ADDR=<first host>")
}

func readSlurm(_ d: inout RankDiscovery, _ r: inout Reader, _ env: [String: String]) throws {
    let names = ["SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_NODEID"]
    let missing = names.filter { (env[$0] ?? "").isEmpty }
    guard missing.isEmpty else { throw EnvironmentError(variable: missing.joined(separator: ", "), problem: "missing while SLURM_PROCID is set (srun sets them all)") }
    d.rank = try r.int("rank", "SLURM_PROCID") ?? 0
    d.worldSize = try r.int("world size", "SLURM_NTASKS", min: 1) ?? 1
    d.localRank = try r.int("local rank", "SLURM_LOCALID") ?? 0
    d.nodeRank = try r.int("node rank", "SLURM_NODEID") ?? 0
    guard let tasksName = ["SLURM_STEP_TASKS_PER_NODE", "SLURM_TASKS_PER_NODE"].first(where: { !(env[$0] ?? "").isEmpty }) else {
        throw EnvironmentError(variable: "SLURM_STEP_TASKS_PER_NODE", problem: "missing under srun: cannot tell how many ranks share this node")
    }
    let perNode: [Int]
    do { perNode = try expandTasksPerNode(env[tasksName]!) } catch { throw EnvironmentError(variable: tasksName, problem: "\(error)") }
    guard d.nodeRank < perNode.count else { throw EnvironmentError(variable: tasksName, problem: "lists \(perNode.count) node(s) but SLURM_NODEID is \(d.nodeRank)") }
    d.localWorldSize = perNode[d.nodeRank]
    r.note("local world size", "\(tasksName)[SLURM_NODEID]")
    if let step = env["SLURM_STEP_ID"] ?? env["SLURM_STEPID"], let job = env["SLURM_JOB_ID"] ?? env["SLURM_JOBID"] {
        d.jobID = "slurm-\(job).\(step)"
        r.note("job id", "SLURM_JOB_ID.SLURM_STEP_ID")
    }
    if let address = r.string("master address", ["MASTER_ADDR"]) {
        d.masterAddress = address
    } else if let listName = ["SLURM_STEP_NODELIST", "SLURM_JOB_NODELIST", "SLURM_NODELIST"].first(where: { !(env[$0] ?? "").isEmpty }) {
        do {
            guard let first = try expandHostlist(env[listName]!).first else { throw HostlistError(text: env[listName]!, problem: "no host") }
            d.masterAddress = first
            r.note("master address", "first host of \(listName)")
        } catch let error as HostlistError {
            throw EnvironmentError(variable: listName, problem: "\(error)")
        }
    } else if d.localWorldSize < d.worldSize {
        throw EnvironmentError(variable: "SLURM_STEP_NODELIST", problem: "missing: cannot tell which host is the master")
    }
    try readPort(&d, &r, slurmJob: env["SLURM_JOB_ID"] ?? env["SLURM_JOBID"])
}

/// MPI launchers do not name the hosts: a one-node job uses loopback, a multi-node job needs MASTER_ADDR.
func readMaster(_ d: inout RankDiscovery, _ r: inout Reader, multiHostHint: String) throws {
    if let address = r.string("master address", ["MASTER_ADDR"]) {
        d.masterAddress = address
    } else if d.localWorldSize < d.worldSize {
        throw EnvironmentError(variable: "MASTER_ADDR", problem: "required when ranks span hosts (\(multiHostHint))")
    } else {
        r.note("master address", "loopback: every rank on this host")
    }
    try readPort(&d, &r, slurmJob: nil)
}

func readPort(_ d: inout RankDiscovery, _ r: inout Reader, slurmJob: String?) throws {
    if let port = try r.int("master port", "MASTER_PORT", min: 1) {
        guard port <= 65535 else { throw EnvironmentError(variable: "MASTER_PORT", problem: "\(port) is not a TCP port") }
        d.masterPort = port
    } else if let job = slurmJob ?? d.jobID {
        d.masterPort = derivedPort(jobID: job)
        r.note("master port", "15000 + the last 4 digits of the job id (\(job)); set MASTER_PORT to choose")
    }
}

/// Lightning's rule under Slurm: 15000 + the job id's last four digits; a job id without digits is hashed.
public func derivedPort(jobID: String) -> Int {
    let digits = jobID.filter(\.isNumber)
    if let n = Int(digits.suffix(4)) { return 15000 + n }
    return 15000 + Int(jobID.utf8.reduce(UInt32(2166136261)) { ($0 ^ UInt32($1)) &* 16777619 } % 10000)
}
