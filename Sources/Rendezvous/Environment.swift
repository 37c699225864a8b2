import Foundation
import Transport

/// A missing or malformed environment variable, by name.
public struct EnvironmentError: Error, CustomStringConvertible, Equatable {
    public let variable: String
    public let problem: String
    public var description: String { "environment variable \(variable): \(problem)" }
}

/// torchrun's environment, exactly: RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK,
/// MASTER_ADDR, MASTER_PORT (our store's port, unless SWIFT_DDP_STORE_PORT names it: our launcher keeps
/// MASTER_PORT free for the program); plus SWIFT_DDP_SECRET (hex job secret), SWIFT_DDP_JOB_ID and
/// SWIFT_DDP_TIMEOUT (seconds), SWIFT_DDP_RESTART_COUNT (how many times the launcher restarted the
/// group; torchrun's TORCHELASTIC_RESTART_COUNT). Without RANK/WORLD_SIZE a process runs alone (world size 1).
public struct DistributedEnvironment: Sendable, Equatable {
    public var rank = 0
    public var localRank = 0
    public var worldSize = 1
    public var localWorldSize = 1
    public var groupRank = 0
    public var masterAddress = "127.0.0.1"
    public var masterPort = 0
    public var secretHex = ""
    /// SWIFT_DDP_INSECURE=1 (or a program's --insecure): a multi-host job may start without a secret.
    public var insecure = false
    public var jobID = "swift-ddp"
    public var timeoutSeconds: Double = 30
    public var restartCount = 0
    /// Where this rank listens for its peers (SWIFT_DDP_LISTEN_ADDR, set by the launcher; default the
    /// master's address, right when every rank runs on the master's host).
    public var listenAddress: String?
    /// SWIFT_DDP_SPIN_US: how long a wait busy-polls before blocking (overrides the program's choice).
    public var spinMicroseconds: Double?
    /// SWIFT_DDP_CHUNK_KB: bytes per data frame, in KiB.
    public var chunkBytes: Int?
    /// SWIFT_DDP_AUTH_FRAMES=1: every frame after the handshake carries a MAC tag (AES-GCM) (the launcher's
    /// --authenticate-frames sets it for every rank and for its store).
    public var authenticateFrames = false

    public init() {}

    /// Who started this rank and where each figure came from (see Discovery.swift).
    public var discovery = RankDiscovery(launcher: .none)
    /// Rank 0 starts the rendezvous store itself (every launcher but ours).
    public var hostsStore: Bool { discovery.rankZeroHostsStore && rank == 0 }
    /// Where the secret came from (for `ddp-train env`), or why there is none.
    public var secretSource = "none"

    public static func fromProcess(_ env: [String: String] = ProcessInfo.processInfo.environment) throws -> DistributedEnvironment {
        var e = DistributedEnvironment()
        let d = try discoverRank(env)
        e.discovery = d
        e.rank = d.rank; e.worldSize = d.worldSize; e.localRank = d.localRank; e.localWorldSize = d.localWorldSize
        e.groupRank = d.nodeRank; e.masterAddress = d.masterAddress; e.masterPort = d.masterPort
        if let job = d.jobID { e.jobID = job }
        if let text = env["SWIFT_DDP_RESTART_COUNT"], !text.isEmpty {
            guard let v = Int(text), v >= 0 else { throw EnvironmentError(variable: "SWIFT_DDP_RESTART_COUNT", problem: "'\(text)' is not an integer >= 0") }
            e.restartCount = v
        }
        if e.worldSize > 1 { try e.readSecret(env) }
        if let listen = env["SWIFT_DDP_LISTEN_ADDR"], !listen.isEmpty { e.listenAddress = listen }
        if let job = env["SWIFT_DDP_JOB_ID"], !job.isEmpty { e.jobID = job }
        if let t = env["SWIFT_DDP_TIMEOUT"] {
            guard let v = Double(t), v > 0 else { throw EnvironmentError(variable: "SWIFT_DDP_TIMEOUT", problem: "'\(t)' is not a positive number of seconds") }
            e.timeoutSeconds = v
        }
        if let text = env["SWIFT_DDP_SPIN_US"], !text.isEmpty {
            guard let v = Double(text), v >= 0, v <= 1e6 else { throw EnvironmentError(variable: "SWIFT_DDP_SPIN_US", problem: "'\(text)' is not a number of microseconds in 0...1000000") }
            e.spinMicroseconds = v
        }
        if let text = env["SWIFT_DDP_AUTH_FRAMES"], !text.isEmpty {
            guard text == "0" || text == "1" else { throw EnvironmentError(variable: "SWIFT_DDP_AUTH_FRAMES", problem: "'\(text)' must be 0 or 1") }
            e.authenticateFrames = text == "1"
        }
        if let text = env["SWIFT_DDP_CHUNK_KB"], !text.isEmpty {
            guard let v = Int(text), v >= 1, v <= FrameHeader.maxLength >> 10 else {
                throw EnvironmentError(variable: "SWIFT_DDP_CHUNK_KB", problem: "'\(text)' is not a whole number of KiB in 1...\(FrameHeader.maxLength >> 10)")
            }
            e.chunkBytes = v << 10
        }
        return e
    }

    /// The job secret: SWIFT_DDP_SECRET (hex), else SWIFT_DDP_SECRET_FILE (a file only its owner can
    /// read, e.g. on a shared filesystem). Our launcher always sets one. Under another launcher a job on
    /// one host may run without (the key is then derived from the job id: any local user could join),
    /// a job across hosts only with SWIFT_DDP_INSECURE=1.
    mutating func readSecret(_ env: [String: String]) throws {
        insecure = env["SWIFT_DDP_INSECURE"] == "1"
        if let text = env["SWIFT_DDP_SECRET"], !text.isEmpty {
            guard text.count >= 32, hexBytes(text) != nil else {
                throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "at least 16 bytes as hex (e.g. od -An -tx1 -N16 /dev/urandom | tr -d ' \\n')")
            }
            secretHex = text; secretSource = "SWIFT_DDP_SECRET"
        } else if let path = env["SWIFT_DDP_SECRET_FILE"], !path.isEmpty {
            do { secretHex = hexString(try readSecretFile(path)) } catch let error as SecretFileError {
                throw EnvironmentError(variable: "SWIFT_DDP_SECRET_FILE", problem: error.message)
            }
            secretSource = "SWIFT_DDP_SECRET_FILE (\(path))"
        } else if discovery.launcher == .swiftDDP {
            throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "required when WORLD_SIZE > 1: at least 16 bytes as hex (the launcher sets it)")
        } else if discovery.isMultiHost && !insecure {
            throw EnvironmentError(variable: "SWIFT_DDP_SECRET", problem: "a job across hosts needs a shared secret: set SWIFT_DDP_SECRET, or SWIFT_DDP_SECRET_FILE to a mode-600 file on a shared filesystem (or accept anyone on the network joining: SWIFT_DDP_INSECURE=1 / --insecure)")
        } else {
            // Not a secret: every rank derives it from the job id.
            secretHex = hexString(Array(("swift-ddp insecure " + jobID).utf8))
            secretSource = insecure ? "none (SWIFT_DDP_INSECURE=1: derived from the job id)" : "none (one host: derived from the job id)"
        }
    }

    /// Each restart is its own rendezvous: a rank of attempt k cannot join a store or a peer left over
    /// from attempt k-1.
    public var identity: JobIdentity {
        JobIdentity(jobID: attemptJobID(jobID, restart: restartCount), worldSize: worldSize, secret: hexBytes(secretHex) ?? [],
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
    let trimmed = text.trimmingCharacters(in: .whitespacesAndNewlines)
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

public func hexString(_ bytes: [UInt8]) -> String { bytes.map { String(format: "%02x", $0) }.joined() }

/// The job id one attempt of a job authenticates with.
public func attemptJobID(_ jobID: String, restart: Int) -> String { restart == 0 ? jobID : "\(jobID)#restart\(restart)" }
