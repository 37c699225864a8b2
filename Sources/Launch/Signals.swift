import Foundation

/// On SIGINT, SIGTERM or SIGHUP (torchrun's termination signals) the launcher passes the signal to
/// every worker, waits the grace period, SIGKILLs stragglers and exits 128 + signal. SIGUSR1 and SIGUSR2
/// are passed to every worker and the job goes on (a program may checkpoint on them). The sources are
/// returned so the caller keeps them alive. `current` gives the group running now (restarts replace it).
public func forwardTerminationSignals(to current: @escaping @Sendable () -> WorkerGroup?,
                                      log: @escaping @Sendable (String) -> Void) -> [DispatchSourceSignal] {
    let stopping = [SIGINT, SIGTERM, SIGHUP].map { sig in
        source(for: sig) {
            log("[launcher] received \(signalName(sig)); stopping all ranks")
            current()?.terminateAll(signal: sig)
            exit(128 + sig)
        }
    }
    let passing = [SIGUSR1, SIGUSR2].map { sig in
        source(for: sig) {
            log("[launcher] received \(signalName(sig)); passing it to every rank")
            current()?.signalAll(sig)
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
