import ArgumentParser
import DmirrCore
import DmirrNet
import Foundation

struct CertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert",
        abstract: "Make the fleet's CA and issue node and operator certificates (see certs/README.md).",
        subcommands: [CA.self, Issue.self]
    )

    struct CA: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Create a fleet CA: DIR/ca.pem (share with every node) and DIR/ca.key (keep offline, mode 0600).")

        @Option(help: "The fleet's name; it becomes part of every identity (dmirr://FLEET/…).")
        var fleet: String

        @Option(help: "Directory to write ca.pem and ca.key into (created if missing).")
        var out: String

        @Option(help: "Validity in days.")
        var days = 3650

        @Flag(help: "Replace existing files.")
        var force = false

        func run() throws {
            try runReportingErrors {
                try makeDirectory(out)
                let ca = try FleetPKI.makeCA(fleet: fleet, days: days)
                // The key first: a ca.pem without its key would be useless, the reverse is recoverable.
                try FleetPKI.write(ca.privateKeyPEM, to: out + "/ca.key", secret: true, force: force)
                try FleetPKI.write(ca.certificatePEM, to: out + "/ca.pem", secret: false, force: force)
                print("wrote \(out)/ca.pem and \(out)/ca.key (0600) for fleet \(fleet), valid \(days) days")
            }
        }
    }

    struct Issue: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Issue a certificate: DIR/NAME.pem and DIR/NAME.key (0600), URI SAN dmirr://FLEET/node/NAME.")

        @Option(help: "Directory holding the fleet's ca.pem and ca.key.")
        var ca: String

        @Option(help: "The node's (or operator's) name.")
        var node: String

        @Option(help: "A DNS name for the host (repeatable).")
        var host: [String] = []

        @Option(help: "An IP address for the host (repeatable).")
        var ip: [String] = []

        @Flag(help: "Issue an operator certificate: may query status, never gossip.")
        var `operator` = false

        @Option(help: "Validity in days.")
        var days = 90

        @Option(help: "Directory to write NAME.pem and NAME.key into (created if missing).")
        var out: String

        @Flag(help: "Replace existing files.")
        var force = false

        func run() throws {
            try runReportingErrors {
                guard PeerIdentity.isValidName(node) else {
                    throw PKIError(.invalidName, "'\(node)' is not a valid name: use letters, digits, '-', '.', '_'")
                }
                let caPEM = try read(ca + "/ca.pem")
                let keyPEM = try read(ca + "/ca.key")
                guard let fleet = FleetPKI.fleet(ofCA: try Certificate(pemEncodedForCLI: caPEM, path: ca + "/ca.pem")) else {
                    throw PKIError(.badInput, "\(ca)/ca.pem is not a dmirr fleet CA")
                }
                let identity = PeerIdentity(fleet: fleet, role: `operator` ? .operator : .node, name: node)
                let issued = try FleetPKI.issue(
                    caCertificatePEM: caPEM, caKeyPEM: keyPEM, identity: identity, hosts: host, ips: ip, days: days)
                try makeDirectory(out)
                try FleetPKI.write(issued.privateKeyPEM, to: "\(out)/\(node).key", secret: true, force: force)
                try FleetPKI.write(issued.certificatePEM, to: "\(out)/\(node).pem", secret: false, force: force)
                print("wrote \(out)/\(node).pem and \(out)/\(node).key (0600) for \(identity), valid \(days) days")
            }
        }

        func read(_ path: String) throws -> String {
            guard FileManager.default.isReadableFile(atPath: path),
                let text = try? String(contentsOfFile: path, encoding: .utf8)
            else {
                throw PKIError(.io, "cannot read \(path): missing, unreadable or not text (is --ca the directory `dmirr cert ca --out` wrote?)")
            }
            return text
        }
    }
}

import X509

extension Certificate {
    init(pemEncodedForCLI pem: String, path: String) throws {
        do { try self.init(pemEncoded: pem) } catch {
            throw PKIError(.badInput, "\(path) is not a PEM certificate", underlying: error)
        }
    }
}

private func makeDirectory(_ path: String) throws {
    do { try FileManager.default.createDirectory(atPath: path, withIntermediateDirectories: true) } catch {
        throw PKIError(.io, "cannot create \(path)", underlying: error)
    }
}

/// PKI errors are the operator's to fix (wrong path, existing file, wrong CA): print them and exit 2.
private func runReportingErrors(_ body: () throws -> Void) throws {
    do { try body() } catch let error as PKIError {
        printError("dmirr cert: \(error)")
        throw ExitCode(2)
    }
}
