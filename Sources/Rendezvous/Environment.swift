import FoundationEssentials
import Glibc
import Support
import Topology
import Transport

/// A missing or malformed environment variable, by name.
public struct EnvironmentError: Error, CustomStringConvertible, Equatable {
    public let variable: String
    public let problem: String
    public var description: String { "environment variable \(variable): \(problem)" }
}

/// The one contract between a launcher and its ranks: every variable a rank reads, read here (`read`)
/// and written here (`variables`), so a launcher and a rank cannot disagree on a name or a format.
///
///   torchrun's    RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, MASTER_ADDR, MASTER_PORT
///                 (the program's own port under our launcher; our store's otherwise)
///   ours          SWIFT_DDP_STORE_PORT (our store's port, from our launcher), SWIFT_DDP_SECRET (hex; or
///                 SWIFT_DDP_SECRET_FILE), SWIFT_DDP_JOB_ID, SWIFT_DDP_TIMEOUT (s), SWIFT_DDP_RESTART_COUNT,
///                 SWIFT_DDP_LAUNCHER_PID, SWIFT_DDP_LISTEN_ADDR, SWIFT_DDP_IFACE, SWIFT_DDP_SPIN_US,
///                 SWIFT_DDP_CHUNK_KB, SWIFT_DDP_LANE_STORES, SWIFT_DDP_AUTH_FRAMES (0/1), SWIFT_DDP_BIND_CPUS / _NODE / _MEMORY
///                 (the launcher's placement), SWIFT_DDP_NUMA_BIND (policy under other launchers),
///                 SWIFT_DDP_TUNING (alpha-beta table), SWIFT_DDP_INSECURE (0/1)
/// Under Slurm, mpirun or Kubernetes the rank, sizes and master come from their variables instead
/// (Discovery.swift). Without any, a process runs alone (world size 1).
public struct WorkerEnvironment: Sendable, Equatable {
    public var rank = 0
    public var localRank = 0
    public var worldSize = 1
    public var localWorldSize = 1
    /// This host's ranks outnumber its cores: waits yield the core while they spin, and the trainer
    /// averages its gradient buckets after backward.
    public var oversubscribesHost: Bool { localWorldSize > ProcessInfo.processInfo.activeProcessorCount }
    public var groupRank = 0
    public var masterAddress = "127.0.0.1"
    /// Our rendezvous store's port.
    public var masterPort = 0
    /// Under our launcher: MASTER_PORT, left free for the program's own rendezvous.
    public var programPort: Int?
    /// The job secret (carried as hex in SWIFT_DDP_SECRET).
    public var secret: [UInt8] = []
    /// SWIFT_DDP_INSECURE=1 (or a program's --insecure): a multi-host job may start without a secret.
    public var insecure = false
    public var jobID = "swift-ddp"
    public var timeoutSeconds: Double = 30
    public var restartCount = 0
    /// The launcher that started this process (ranks die with it).
    public var launcherPID: Int32?
    /// Where this rank listens for its peers (SWIFT_DDP_LISTEN_ADDR, set by the launcher; default the
    /// master's address, right when every rank runs on the master's host).
    public var listenAddress: String?
    /// SWIFT_DDP_IFACE: the network interface whose address to listen on.
    public var interface: String?
    /// SWIFT_DDP_SPIN_US: how long a wait busy-polls before blocking (overrides the program's choice).
    public var spinMicroseconds: Double?
    /// SWIFT_DDP_CHUNK_KB: bytes per data frame (a whole number of KiB).
    public var chunkBytes: Int?
    /// SWIFT_DDP_SHM_KB: bytes of each shared-memory ring between two ranks on one host, and of each
    /// rank's slot in a one-host job's arena (a whole number of KiB, multiple of 4; 0 keeps them on
    /// loopback TCP, with no arena). Default SharedMemorySetup.defaultRingBytes.
    public var sharedMemoryRingBytes: Int?
    /// SWIFT_DDP_LANE_STORES: auto (default), cached or streaming, how a lane's writer stores its bytes
    /// (LaneStores).
    public var laneStores: LaneStores?
    /// SWIFT_DDP_AUTH_FRAMES=1: every frame after the handshake carries a MAC tag (AES-GCM) (the launcher's
    /// --authenticate-frames sets it for every rank and for its store).
    public var authenticateFrames = false
    /// The launcher's placement for this rank: a CPU list ("0-3,8"), a NUMA node, whether memory is bound.
    public var bindCPUs: String?
    public var bindNode: Int?
    public var bindMemory = false
    /// SWIFT_DDP_NUMA_BIND: the placement policy a rank applies itself under another launcher.
    public var numaBind: String?
    /// SWIFT_DDP_TUNING: the allreduce tuning table `auto` consults.
    public var tuningPath: String?
    /// Who started this rank and where each figure came from (see Discovery.swift).
    public var discovery = RankDiscovery(launcher: .none)
    /// Where the secret came from (for `ddp-train env`), or why there is none.
    public var secretSource = "none"

    public init() {}

    /// Rank 0 starts the rendezvous store itself (every launcher but ours).
    public var hostsStore: Bool { discovery.rankZeroHostsStore && rank == 0 }

    public static func fromProcess(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> WorkerEnvironment {
        try read(env)
    }

    /// SWIFT_DDP_SHM_KB alone (`ddp-train plan` reads it outside a job), validated as a rank reads it.
    public static func sharedMemoryRingBytes(_ env: [String: String]) throws -> Int? {
        guard let text = env["SWIFT_DDP_SHM_KB"], !text.isEmpty else { return nil }
        guard let kb = Int(text), kb >= 0 && kb % 4 == 0 && kb <= 1 << 20 else {
            throw EnvironmentError(variable: "SWIFT_DDP_SHM_KB", problem: "'\(text)' is not 0 or a whole number of KiB, a multiple of 4, up to 1048576")
        }
        return kb << 10
    }

    public static func read(_ env: [String: String]) throws -> WorkerEnvironment {
        var e = WorkerEnvironment()
        func text(_ name: String) -> String? { env[name].flatMap { $0.isEmpty ? nil : $0 } }
        func number<T>(_ name: String, _ parse: (String) -> T?, _ valid: (T) -> Bool, _ what: String) throws -> T? {
            guard let t = text(name) else { return nil }
            guard let v = parse(t), valid(v) else { throw EnvironmentError(variable: name, problem: "'\(t)' is not \(what)") }
            return v
        }
        func flag(_ name: String) throws -> Bool {
            guard let t = text(name) else { return false }
            guard t == "0" || t == "1" else { throw EnvironmentError(variable: name, problem: "'\(t)' must be 0 or 1") }
            return t == "1"
        }
        let d = try discoverRank(env)
        e.discovery = d
        e.rank = d.rank; e.worldSize = d.worldSize; e.localRank = d.localRank; e.localWorldSize = d.localWorldSize
        e.groupRank = d.nodeRank; e.masterAddress = d.masterAddress; e.masterPort = d.masterPort
        if d.launcher == .swiftDDP { e.programPort = try number("MASTER_PORT", { Int($0) }, { (0...65535).contains($0) }, "a TCP port") }
        if let job = text("SWIFT_DDP_JOB_ID") ?? d.jobID { e.jobID = job }
        e.restartCount = try number("SWIFT_DDP_RESTART_COUNT", { Int($0) }, { $0 >= 0 }, "an integer >= 0") ?? 0
        e.launcherPID = try number("SWIFT_DDP_LAUNCHER_PID", { Int32($0) }, { $0 > 0 }, "a process id")
        e.insecure = try flag("SWIFT_DDP_INSECURE")
        if e.worldSize > 1 { try e.readSecret(env) }
        e.listenAddress = text("SWIFT_DDP_LISTEN_ADDR")
        e.interface = text("SWIFT_DDP_IFACE")
        e.timeoutSeconds = try number("SWIFT_DDP_TIMEOUT", { Double($0) }, { $0 > 0 && $0.isFinite }, "a positive number of seconds") ?? 30
        e.spinMicroseconds = try number("SWIFT_DDP_SPIN_US", { Double($0) }, { $0 >= 0 && $0 <= 1e6 }, "a number of microseconds in 0...1000000")
        e.authenticateFrames = try flag("SWIFT_DDP_AUTH_FRAMES")
        e.chunkBytes = try number("SWIFT_DDP_CHUNK_KB", { Int($0) }, { $0 >= 1 && $0 <= FrameHeader.maxLength >> 10 },
                                  "a whole number of KiB in 1...\(FrameHeader.maxLength >> 10)").map { $0 << 10 }
        e.sharedMemoryRingBytes = try sharedMemoryRingBytes(env)
        e.laneStores = try number("SWIFT_DDP_LANE_STORES", { LaneStores(rawValue: $0) }, { _ in true },
                                  "one of \(LaneStores.allCases.map(\.rawValue).joined(separator: ", "))")
        e.bindCPUs = text("SWIFT_DDP_BIND_CPUS")
        e.bindNode = try number("SWIFT_DDP_BIND_NODE", { Int($0) }, { $0 >= 0 }, "a NUMA node number")
        e.bindMemory = try flag("SWIFT_DDP_BIND_MEMORY")
        e.numaBind = text("SWIFT_DDP_NUMA_BIND")
        e.tuningPath = text("SWIFT_DDP_TUNING")
        return e
    }

    /// The variables that give a rank this environment (what our launcher sets; torchrun's extras, such
    /// as ROLE_RANK or TORCHELASTIC_RUN_ID, are the launcher's own). `read(variables())` gives it back.
    public func variables() -> [String: String] {
        var v: [String: String] = [
            "RANK": String(rank), "LOCAL_RANK": String(localRank), "WORLD_SIZE": String(worldSize),
            "LOCAL_WORLD_SIZE": String(localWorldSize), "GROUP_RANK": String(groupRank), "MASTER_ADDR": masterAddress,
            "SWIFT_DDP_STORE_PORT": String(masterPort), "MASTER_PORT": String(programPort ?? 0),
            "SWIFT_DDP_SECRET": hexString(secret), "SWIFT_DDP_JOB_ID": jobID, "SWIFT_DDP_TIMEOUT": String(timeoutSeconds),
            "SWIFT_DDP_RESTART_COUNT": String(restartCount), "SWIFT_DDP_AUTH_FRAMES": authenticateFrames ? "1" : "0",
        ]
        func set(_ name: String, _ value: String?) { if let value { v[name] = value } }
        set("SWIFT_DDP_LAUNCHER_PID", launcherPID.map { String($0) })
        set("SWIFT_DDP_LISTEN_ADDR", listenAddress)
        set("SWIFT_DDP_IFACE", interface)
        set("SWIFT_DDP_SPIN_US", spinMicroseconds.map { String($0) })
        set("SWIFT_DDP_CHUNK_KB", chunkBytes.map { String($0 >> 10) })
        set("SWIFT_DDP_SHM_KB", sharedMemoryRingBytes.map { String($0 >> 10) })
        set("SWIFT_DDP_LANE_STORES", laneStores?.rawValue)
        if let bindCPUs {
            v["SWIFT_DDP_BIND_CPUS"] = bindCPUs
            v["SWIFT_DDP_BIND_NODE"] = bindNode.map { String($0) } ?? ""
            v["SWIFT_DDP_BIND_MEMORY"] = bindMemory ? "1" : "0"
        }
        set("SWIFT_DDP_NUMA_BIND", numaBind)
        set("SWIFT_DDP_TUNING", tuningPath)
        if insecure { v["SWIFT_DDP_INSECURE"] = "1" }
        return v
    }

    /// The job secret: SWIFT_DDP_SECRET (hex), else SWIFT_DDP_SECRET_FILE (a file only its owner can
    /// read, e.g. on a shared filesystem). Our launcher always sets one. Under another launcher a job on
    /// one host may run without (the key is then derived from the job id: any local user could join),
    /// a job across hosts only with SWIFT_DDP_INSECURE=1.
    mutating func readSecret(_ env: [String: String]) throws {
        if let text = env["SWIFT_DDP_SECRET"], !text.isEmpty {
            guard text.count >= 32, let bytes = hexBytes(text) else {
                throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "at least 16 bytes as hex (e.g. od -An -tx1 -N16 /dev/urandom | tr -d ' \\n')")
            }
            secret = bytes; secretSource = "SWIFT_DDP_SECRET"
        } else if let path = env["SWIFT_DDP_SECRET_FILE"], !path.isEmpty {
            do { secret = try readSecretFile(path) } catch let error as SecretFileError {
                throw EnvironmentError(variable: "SWIFT_DDP_SECRET_FILE", problem: error.message)
            }
            secretSource = "SWIFT_DDP_SECRET_FILE (\(path))"
        } else if discovery.launcher == .swiftDDP {
            throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "required when WORLD_SIZE > 1: at least 16 bytes as hex (the launcher sets it)")
        } else if discovery.isMultiHost && !insecure {
            throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "a job across hosts needs a shared secret: set SWIFT_DDP_SECRET, or SWIFT_DDP_SECRET_FILE to a mode-600 file on a shared filesystem (or accept anyone on the network joining: SWIFT_DDP_INSECURE=1 / --insecure)")
        } else {
            // Not a secret: every rank derives it from the job id.
            secret = Array(("swift-ddp insecure " + (env["SWIFT_DDP_JOB_ID"] ?? discovery.jobID ?? jobID)).utf8)
            secretSource = insecure ? "none (SWIFT_DDP_INSECURE=1: derived from the job id)" : "none (one host: derived from the job id)"
        }
    }

    /// Each restart is its own rendezvous: a rank of attempt k cannot join a store or a peer left over
    /// from attempt k-1.
    public var identity: JobIdentity {
        JobIdentity(jobID: attemptJobID(jobID, restart: restartCount), worldSize: worldSize, secret: secret,
                    authenticateFrames: authenticateFrames)
    }
}

public struct SecretFileError: Error, CustomStringConvertible {
    public let message: String
    public var description: String { message }
}

/// A secret file: a regular file that only its owner can read (no group or other permission bits), as
/// ssh insists for keys, holding at least 16 bytes as hex.
public func readSecretFile(_ path: String) throws -> [UInt8] {
    var info = stat()
    guard stat(path, &info) == 0 else { throw SecretFileError(message: "'\(path)': \(String(cString: strerror(errno)))") }
    guard (info.st_mode & S_IFMT) == S_IFREG else { throw SecretFileError(message: "'\(path)' is not a regular file") }
    guard info.st_mode & 0o077 == 0 else {
        throw SecretFileError(message: "'\(path)' is readable by others (mode \(String(info.st_mode & 0o777, radix: 8))): chmod 600 it")
    }
    guard info.st_size <= 4096, let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw SecretFileError(message: "'\(path)' cannot be read as a short text file")
    }
    let trimmed = text.trimmed
    guard trimmed.count >= 32, let bytes = hexBytes(trimmed) else {
        throw SecretFileError(message: "'\(path)': the secret must be at least 16 bytes as hex (e.g. od -An -tx1 -N16 /dev/urandom | tr -d ' \\n')")
    }
    return bytes
}

public func hexBytes(_ text: String) -> [UInt8]? {
    let chars = Array(text.utf8)
    guard chars.count % 2 == 0 else { return nil }
    var out: [UInt8] = []
    out.reserveCapacity(chars.count / 2)
    for i in stride(from: 0, to: chars.count, by: 2) {
        guard let hi = hexValue(chars[i]), let lo = hexValue(chars[i + 1]) else { return nil }
        out.append(hi << 4 | lo)
    }
    return out
}

private func hexValue(_ c: UInt8) -> UInt8? {
    switch c {
    case 48...57: return c - 48
    case 97...102: return c - 87
    case 65...70: return c - 55
    default: return nil
    }
}

public func hexString(_ bytes: [UInt8]) -> String { bytes.map { format("%02x", $0) }.joined() }

/// The job id one attempt of a job authenticates with.
public func attemptJobID(_ jobID: String, restart: Int) -> String { restart == 0 ? jobID : "\(jobID)#restart\(restart)" }

/// A rank's first step under any launcher (see Topology's prepareWorker), from its environment.
public func prepareWorker(_ env: WorkerEnvironment) throws {
    try prepareWorker(localRank: env.localRank, localWorldSize: env.localWorldSize, launcherPID: env.launcherPID,
                      cpus: env.bindCPUs, node: env.bindNode, bindMemory: env.bindMemory, policy: env.numaBind)
}
