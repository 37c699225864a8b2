// A pipeline step when its ranks share fewer cores than there are ranks (4 ranks on a 2-core machine):
// a rank can compute only while it holds a core. Each rank runs its list in order as in
// PipelineSimulator (receives wait for their message, sends take no time on the rank); a compute
// action takes the first core to come free and keeps it until it ends (the kernel's time slices
// are long next to these passes' switches, so list scheduling is the model). Actions run in order of
// the time they could start, so a message is never used before it was sent. With at least as many
// cores as ranks this is PipelineSimulator's step time; with one core it is the sum of all passes.

public enum SharedCoreSimulator {
    /// The step time of `schedule` (which must have passed PipelineSimulator.run) at `costs` on
    /// `cores` cores. Fractional cores (the pipeline's share of a host) count as their floor, at least 1.
    public static func stepTime(_ schedule: PipelineSchedule, costs: PipelineCosts, cores: Double) -> Double {
        let p = schedule.pipelineParallel
        var coreFree = Array(repeating: 0.0, count: max(1, Int(cores)))
        var next = Array(repeating: 0, count: p), ready = Array(repeating: 0.0, count: p)
        var arrival: [PipelineAction: Double] = [:]
        while true {
            // The rank whose next action can start first (receives whose message is not sent yet wait).
            var best: (rank: Int, start: Double)?
            let firstFree = coreFree.min() ?? 0
            for r in 0..<p where next[r] < schedule.actions[r].count {
                let a = schedule.actions[r][next[r]]
                var start = ready[r]
                if a.kind.isReceive {
                    guard let at = arrival[a] else { continue }
                    start = max(start, at)
                } else if a.kind.isCompute && a.kind != .step {
                    start = max(start, firstFree)
                }
                if best == nil || start < best!.start { best = (r, start) }
            }
            guard let (r, start) = best else { break }
            let a = schedule.actions[r][next[r]]
            if a.kind.isSend {
                arrival[PipelineSimulator.partner(of: a)] = start + costs.transfer
                ready[r] = start
            } else if a.kind.isCompute && a.kind != .step {
                let core = coreFree.firstIndex(of: coreFree.min()!)!
                ready[r] = start + costs.cost(a)
                coreFree[core] = ready[r]
            } else {
                ready[r] = start + (a.kind == .step ? costs.step : 0)
            }
            next[r] += 1
        }
        return ready.max() ?? 0
    }
}
