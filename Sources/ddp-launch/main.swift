import ArgumentParser
import Foundation
import Launch
import Parallel
import Topology
import Training
import Transport

/// torchrun-like launcher: starts N local ranks with RANK/LOCAL_RANK/WORLD_SIZE/MASTER_ADDR/MASTER_PORT
/// and a fresh job secret, hosts the rendezvous store on node 0, prefixes their output and tears the
/// group down when one fails. Bad options print one line and exit 2.
struct DDPLaunch: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "ddp-launch",
        abstract: "Launch data-parallel ranks: ddp-launch --nproc-per-node 2 -- CONFIG.json | PROGRAM [ARGS...]",
        discussion: """
        Ranks get torchrun's environment (RANK, LOCAL_RANK, WORLD_SIZE, LOCAL_WORLD_SIZE, GROUP_RANK, ROLE_RANK, \
        ROLE_WORLD_SIZE, MASTER_ADDR, MASTER_PORT, TORCHELASTIC_RESTART_COUNT, TORCHELASTIC_MAX_RESTARTS, \
        TORCHELASTIC_RUN_ID, OMP_NUM_THREADS=1 unless set), so a PyTorch script runs unchanged. torchrun's \
        spellings are accepted: --nproc_per_node, --node_rank, --master_addr, --master_port, --max_restarts, \
        --standalone, --rdzv-endpoint HOST:PORT. SIGINT, SIGTERM and SIGHUP stop every rank; SIGUSR1 and \
        SIGUSR2 are passed to every rank.
        """)

    @Option(help: "Ranks on this node: a number or 'auto' (one per CPU).")
    var nprocPerNode = "1"

    @Option(help: "Number of nodes.")
    var nnodes = 1

    @Option(help: "This node's index, 0..<nnodes.")
    var nodeRank = 0

    @Option(help: "Address of node 0 (rendezvous store).")
    var masterAddr = "127.0.0.1"

    @Option(help: "Our rendezvous store's port on node 0 (ranks see it as SWIFT_DDP_STORE_PORT); 0 picks a free port. Ranks get MASTER_PORT free for a program's own use: a free port on one node, --master-port + 1 on several.")
    var masterPort = 0

    @Option(help: "Also write each rank's output to DIR/rankN.log.")
    var logDir: String?

    @Option(help: "Seconds a rank waits for a peer before failing.")
    var timeout: Double = 30

    @Option(help: "Pin ranks: auto (own cores when there are enough, else whole node), node, core or none.")
    var numaBind = "auto"

    @Option(parsing: .unconditional, help: "Restart the whole group up to K times after a failure; trainers resume from their last checkpoint.")
    var maxRestarts = 0

    @Option(help: "Network interface whose address this node's ranks listen on (default: SWIFT_DDP_IFACE, else the interface that routes to the master).")
    var iface: String?

    @Option(help: "Job secret as hex (default: a fresh random one; multi-node jobs must share it). Visible in ps: prefer --secret-file or SWIFT_DDP_SECRET.")
    var secret: String?

    @Flag(help: "Authenticate every frame with a MAC tag (AES-GCM) (per-connection keys from the handshake): for hosts that do not trust the network between them.")
    var authenticateFrames = false

    @Option(help: "Read the job secret (hex) from this file, which only its owner may read (mode 600 or 400).")
    var secretFile: String?

    @Argument(parsing: .captureForPassthrough, help: "-- then a config file (runs ddp-train) or a program and its arguments.")
    var command: [String] = []

    var workers: Int {
        nprocPerNode == "auto" ? ProcessInfo.processInfo.activeProcessorCount : Int(nprocPerNode) ?? 0
    }

    func validate() throws {
        guard workers >= 1 else { throw ValidationError("--nproc-per-node must be a positive number or 'auto', not '\(nprocPerNode)'") }
        guard nnodes >= 1 else { throw ValidationError("--nnodes must be at least 1") }
        guard nodeRank >= 0 && nodeRank < nnodes else { throw ValidationError("--node-rank \(nodeRank) must be in 0..<\(nnodes)") }
        guard (0...65535).contains(masterPort) else { throw ValidationError("--master-port \(masterPort) is not a TCP port") }
        guard nnodes == 1 || masterPort != 0 else { throw ValidationError("--master-port must be set (not 0) when --nnodes > 1") }
        guard maxRestarts >= 0 else { throw ValidationError("--max-restarts must not be negative") }
        guard timeout > 0, timeout.isFinite, timeout <= 86400 * 365 else { throw ValidationError("--timeout must be a positive number of seconds, at most a year") }
        guard BindingPolicy(rawValue: numaBind) != nil else { throw ValidationError("--numa-bind must be auto, node, core or none, not '\(numaBind)'") }
        if secret != nil && secretFile != nil { throw ValidationError("give the secret once: --secret or --secret-file") }
        let args = command.first == "--" ? Array(command.dropFirst()) : command
        guard let first = args.first else { throw ValidationError("nothing to launch: give '-- CONFIG.json' or '-- PROGRAM ARGS...'") }
        if command.first != "--" && first.hasPrefix("-") { throw ValidationError("unknown option '\(first)'") }
        if first.hasSuffix(".json") {
            guard FileManager.default.fileExists(atPath: first) else { throw ValidationError("config file '\(first)' does not exist") }
        }
    }

    /// The parallel layout of a ddp-train command (its config with the --set overrides), for the start-up
    /// table; nil for other programs, a model-parallel-free layout, or a config the trainer will refuse
    /// (it says why).
    func trainingLayout(_ command: [String], worldSize: Int) -> ParallelLayout? {
        guard command.count >= 3, command[0].hasSuffix("/ddp-train"), command[1] == "train", command[2].hasSuffix(".json") else { return nil }
        var overrides: [String] = []
        var i = 3
        while i + 1 < command.count {
            if command[i] == "--set" { overrides.append(command[i + 1]); i += 2 } else { i += 1 }
        }
        guard let config = try? TrainConfig.load(path: command[2], overrides: overrides),
              config.tensorParallel > 1 || config.pipelineParallel > 1 || config.expertParallel > 1 else { return nil }
        return try? ParallelLayout(worldSize: worldSize, tensorParallel: config.tensorParallel, pipelineParallel: config.pipelineParallel,
                                   expertParallel: config.expertParallel)
    }

    func resolvedCommand() throws -> [String] {
        let args = command.first == "--" ? Array(command.dropFirst()) : command
        let here = URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent().path
        if args[0].hasSuffix(".json") { return [here + "/ddp-train", "train"] + args }
        if args[0].contains("/") { return args }
        for dir in [here] + (ProcessInfo.processInfo.environment["PATH"] ?? "").split(separator: ":").map(String.init) {
            if FileManager.default.isExecutableFile(atPath: dir + "/" + args[0]) { return [dir + "/" + args[0]] + args.dropFirst() }
        }
        throw ValidationError("program '\(args[0])' not found next to ddp-launch or on PATH")
    }

    func run() throws {
        // Inside a Kubeflow PyTorchJob pod the job's WORLD_SIZE and RANK count pods: they are our nodes.
        var nnodes = self.nnodes, nodeRank = self.nodeRank, masterAddr = self.masterAddr, masterPort = self.masterPort
        if self.nnodes == 1 && self.masterPort == 0, let pod = try kubeflowPod(ProcessInfo.processInfo.environment) {
            (nnodes, nodeRank, masterAddr, masterPort) = (pod.pods, pod.index, pod.masterAddress, pod.masterPort)
            FileHandle.standardOutput.write(Data("[launcher] Kubeflow PyTorchJob: pod \(pod.index) of \(pod.pods) (RANK, WORLD_SIZE), store at \(masterAddr):\(masterPort) (MASTER_ADDR, MASTER_PORT)\n".utf8))
        }
        let given: [UInt8]?
        do {
            given = try sharedSecret(option: secret, file: secretFile, environment: ProcessInfo.processInfo.environment)
        } catch let error as LaunchError {
            throw ValidationError(error.message)
        }
        guard given != nil || nnodes == 1 else {
            throw ValidationError("a job of several nodes needs a shared secret: --secret-file FILE, SWIFT_DDP_SECRET, or --secret")
        }
        if let logDir {
            do { try FileManager.default.createDirectory(atPath: logDir, withIntermediateDirectories: true) } catch {
                throw ValidationError("--log-dir '\(logDir)' cannot be created: \((error as NSError).localizedFailureReason ?? error.localizedDescription)")
            }
            guard access(logDir, W_OK) == 0 else { throw ValidationError("--log-dir '\(logDir)' is not writable") }
        }
        var spec = LaunchSpec(command: try resolvedCommand(), localWorkers: workers,
                              jobID: "job-\(getpid())-\(Int(Date().timeIntervalSince1970))",
                              secret: given ?? randomBytes(16))
        spec.nodes = nnodes; spec.nodeRank = nodeRank
        spec.masterAddress = masterAddr; spec.masterPort = masterPort
        spec.logDirectory = logDir; spec.timeoutSeconds = timeout
        spec.authenticateFrames = authenticateFrames
        spec.maxRestarts = maxRestarts
        if given != nil || nnodes > 1 { spec.jobID = "job-\(masterAddr)-\(masterPort)" }
        if nnodes > 1 && masterPort == 65535 { throw ValidationError("--master-port 65535 leaves no port for the program's MASTER_PORT (--master-port + 1)") }
        let say: @Sendable (String) -> Void = { line in FileHandle.standardOutput.write(Data((line + "\n").utf8)) }
        let interface = iface ?? ProcessInfo.processInfo.environment["SWIFT_DDP_IFACE"].flatMap { $0.isEmpty ? nil : $0 }
        let agent: LaunchAgent
        do {
            let listen = try LocalAddress.choose(interface: interface, master: masterAddr, port: masterPort)
            spec.extraEnvironment["SWIFT_DDP_LISTEN_ADDR"] = listen.address
            if nnodes > 1 || interface != nil { say("[launcher] ranks on node \(nodeRank) listen on \(listen.address) (\(listen.reason))") }
            let topology = NumaTopology.current()
            spec.placements = planBinding(topology, localRanks: workers, policy: BindingPolicy(rawValue: numaBind)!)
            agent = LaunchAgent(spec: spec, log: say)
            try agent.checkStorePort()
            if numaBind != "none" {
                let layout = trainingLayout(spec.command, worldSize: nnodes * workers)
                for line in placementTable(spec.placements, rankOffset: nodeRank * workers, numaAvailable: topology.numaAvailable,
                                           columns: layout.map { layout in (layout.tableHeader, { layout.tableCells(of: $0) }) }) {
                    say("[launcher] \(line)")
                }
            }
        } catch {
            say("[launcher] \(error)")
            throw ExitCode(2)
        }
        let signals = forwardTerminationSignals(to: agent, log: say, stopped: { Foundation.exit(128 + $0) })
        defer { signals.forEach { $0.cancel() } }
        let failure: WorkerExit?
        do { failure = try agent.run() } catch {
            say("[launcher] \(error)")
            throw ExitCode(2)
        }
        if let failure { throw ExitCode(failure.signaled ? 128 + failure.status : max(failure.status, 1)) }
    }
}

/// torchrun's spellings of our options, and its options that mean nothing here.
let torchrunSpellings: [String: String] = [
    "--nproc_per_node": "--nproc-per-node", "--node_rank": "--node-rank", "--master_addr": "--master-addr",
    "--master_port": "--master-port", "--max_restarts": "--max-restarts", "--log_dir": "--log-dir",
]

/// Rewrites the launcher's own options (those before the program) from torchrun's forms: underscores,
/// `--standalone` (one node, a free port: our default), `--rdzv-endpoint HOST:PORT` (master address and
/// port), `--rdzv-backend`/`--rdzv-id` (accepted, unused). Returns nil with the help or version request.
func launcherArguments(_ arguments: [String]) throws -> [String]? {
    var out: [String] = [], i = 0
    while i < arguments.count {
        var argument = arguments[i]
        if argument == "--" || !argument.hasPrefix("-") { out += arguments[i...]; break }
        var inlineValue: String?
        if let eq = argument.firstIndex(of: "=") { inlineValue = String(argument[argument.index(after: eq)...]); argument = String(argument[..<eq]) }
        func value() throws -> String {
            if let inlineValue { return inlineValue }
            i += 1
            guard i < arguments.count else { throw ValidationError("\(argument) needs a value") }
            return arguments[i]
        }
        switch argument {
        case "-h", "--help", "--version": return nil
        case "--standalone": break
        case "--rdzv-endpoint", "--rdzv_endpoint":
            let endpoint = try value()
            guard let colon = endpoint.lastIndex(of: ":"), let port = Int(endpoint[endpoint.index(after: colon)...]) else {
                throw ValidationError("--rdzv-endpoint '\(endpoint)' must be HOST:PORT")
            }
            out += ["--master-addr", String(endpoint[..<colon]).trimmingCharacters(in: CharacterSet(charactersIn: "[]")), "--master-port", String(port)]
        case "--rdzv-backend", "--rdzv_backend", "--rdzv-id", "--rdzv_id": _ = try value()
        case "--nnodes":
            let nodes = try value()
            guard Int(nodes) != nil else { throw ValidationError("--nnodes \(nodes): elastic ranges are not supported; give the number of nodes") }
            out += ["--nnodes", nodes]
        default:
            let name = torchrunSpellings[argument] ?? argument
            out.append(inlineValue.map { "\(name)=\($0)" } ?? name)
        }
        i += 1
    }
    return out
}

@main
enum Main {
    static let version = "ddp-launch (swift-ddp) 0.5"

    static func main() {
        do {
            let given = Array(CommandLine.arguments.dropFirst())
            guard let arguments = try launcherArguments(given) else {
                print(given.contains("--version") && !given.contains("--help") && !given.contains("-h") ? version : DDPLaunch.helpMessage())
                exit(0)
            }
            var command = try DDPLaunch.parseAsRoot(arguments)
            try command.run()
        } catch {
            let code = DDPLaunch.exitCode(for: error)
            if code == .success {
                print(DDPLaunch.fullMessage(for: error))
                exit(0)
            }
            if let exitCode = error as? ExitCode { exit(exitCode.rawValue) }
            FileHandle.standardError.write(Data(("ddp-launch: " + DDPLaunch.message(for: error) + "\n").utf8))
            exit(2)
        }
    }
}
