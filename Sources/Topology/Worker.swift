import CShims
import FoundationEssentials
import Glibc

/// What a rank does first, under any launcher: under ours (`launcherPID`), die with the launcher
/// (PR_SET_PDEATHSIG, and at once if it is already gone) and take the CPU and memory placement it
/// planned (`cpus`, `node`, `bindMemory`). Under another launcher (Slurm, mpirun, torchrun,
/// Kubernetes), plan the placement here from this rank's local rank and the ranks on its host, with
/// `policy` (auto, node, core or none; default auto), as our launcher would.
public func prepareWorker(localRank: Int, localWorldSize: Int, launcherPID: Int32?, cpus: String?, node: Int?, bindMemory: Bool,
                          policy name: String?) throws {
    if let pid = launcherPID {
        _ = ddp_set_parent_death_signal(SIGKILL)
        if getppid() != pid { kill(getpid(), SIGKILL) }
        guard let cpus else { return }
        guard let list = parseList(cpus) else { throw BindingError(message: "SWIFT_DDP_BIND_CPUS '\(cpus)' is not a CPU list") }
        return try applyPlacement(cpus: list, node: node, bindMemory: bindMemory)
    }
    guard let policy = BindingPolicy(rawValue: name ?? "auto") else {
        throw BindingError(message: "SWIFT_DDP_NUMA_BIND '\(name ?? "")' must be auto, node, core or none")
    }
    guard policy != .none, localRank < localWorldSize else { return }
    let placement = planBinding(NumaTopology.current(), localRanks: localWorldSize, policy: policy)[localRank]
    guard !placement.cpus.isEmpty else { return }
    try applyPlacement(cpus: placement.cpus, node: placement.node, bindMemory: placement.bindMemory)
}
