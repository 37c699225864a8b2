import Foundation

/// On SIGINT, SIGTERM or SIGHUP (torchrun's termination signals) the agent passes the signal to every
/// worker, waits the grace period and SIGKILLs stragglers; then `stopped(signal)` runs (the executable
/// exits 128 + signal there: library code never exits). SIGUSR1 and SIGUSR2 are passed to every worker
/// and the job goes on (a program may checkpoint on them). The sources are returned so the caller keeps
/// them alive.
public func forwardTerminationSignals(to agent: LaunchAgent, log: @escaping @Sendable (String) -> Void,
                                      stopped: @escaping @Sendable (Int32) -> Void) -> [DispatchSourceSignal] {
    let stopping = [SIGINT, SIGTERM, SIGHUP].map { sig in
        source(for: sig) {
            log("[launcher] received \(signalName(sig)); stopping all ranks")
            agent.stop(signal: sig)
            stopped(sig)
        }
    }
    let passing = [SIGUSR1, SIGUSR2].map { sig in
        source(for: sig) {
            log("[launcher] received \(signalName(sig)); passing it to every rank")
            agent.currentGroup?.signalAll(sig)
        }
    }
    return stopping + passing
}

private func source(for sig: Int32, _ handler: @escaping @Sendable () -> Void) -> DispatchSourceSignal {
    signal(sig, SIG_IGN)
    let source = DispatchSource.makeSignalSource(signal: sig, queue: .global())
    source.setEventHandler(handler: handler)
    source.resume()
    return source
}
