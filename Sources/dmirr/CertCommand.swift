import ArgumentParser
import DmirrCore
import DmirrNet
import Foundation

struct CertCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "cert",
        abstract: "Make the fleet's CA and issue node and operator certificates (see certs/README.md).",
        subcommands: [CA.self, Request.self, Sign.self, Issue.self, Revoke.self]
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

        @OptionGroup var subject: SubjectOptions

        @Option(help: "Validity in days.")
        var days = 90

        @Option(help: "Directory to write NAME.pem and NAME.key into (created if missing).")
        var out: String

        @Flag(help: "Replace existing files.")
        var force = false

        func run() throws {
            try runReportingErrors {
                let node = subject.node
                guard PeerIdentity.isValidName(node) else {
                    throw PKIError(.invalidName, "'\(node)' is not a valid name: use letters, digits, '-', '.', '_'")
                }
                let caPEM = try readPEM(ca + "/ca.pem", hint: caHint)
                let keyPEM = try readPEM(ca + "/ca.key", hint: caHint)
                guard let fleet = FleetPKI.fleet(ofCA: try Certificate(pemEncodedForCLI: caPEM, path: ca + "/ca.pem")) else {
                    throw PKIError(.badInput, "\(ca)/ca.pem is not a dmirr fleet CA")
                }
                let identity = PeerIdentity(fleet: fleet, role: subject.role, name: node)
                let issued = try FleetPKI.issue(
                    caCertificatePEM: caPEM, caKeyPEM: keyPEM, identity: identity, hosts: subject.host, ips: subject.ip, days: days)
                try makeDirectory(out)
                try FleetPKI.write(issued.privateKeyPEM, to: "\(out)/\(node).key", secret: true, force: force)
                try FleetPKI.write(issued.certificatePEM, to: "\(out)/\(node).pem", secret: false, force: force)
                let serial = (try? Certificate(pemEncoded: issued.certificatePEM)).map { RevocationList.hex(Array($0.serialNumber.bytes)) } ?? "?"
                print("wrote \(out)/\(node).pem and \(out)/\(node).key (0600) for \(identity), valid \(days) days, serial \(serial)")
            }
        }
    }
}

/// Who a certificate is for, and the host names it carries (`cert issue`, `cert request`).
struct SubjectOptions: ParsableArguments {
    @Option(help: "The node's (or operator's) name.")
    var node: String

    @Option(help: "A DNS name for the host (repeatable).")
    var host: [String] = []

    @Option(help: "An IP address for the host (repeatable).")
    var ip: [String] = []

    @Flag(help: "An operator certificate: may query status, never gossip.")
    var `operator` = false

    var role: PeerIdentity.Role { `operator` ? .operator : .node }
}

extension CertCommand {
    struct Request: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "On the mirror host: make DIR/NAME.key (0600, never leaves the host) and DIR/NAME.csr for the CA to sign.")

        @Option(help: "The fleet's name (as in the config's `fleet`).")
        var fleet: String

        @OptionGroup var subject: SubjectOptions

        @Option(help: "Directory to write NAME.key and NAME.csr into (created if missing).")
        var out: String

        @Flag(help: "Replace existing files.")
        var force = false

        func run() throws {
            try runReportingErrors {
                let node = subject.node
                for (what, name) in [("fleet", fleet), ("node", node)] where !PeerIdentity.isValidName(name) {
                    throw PKIError(.invalidName, "'\(name)' is not a valid \(what) name: use letters, digits, '-', '.', '_'")
                }
                let identity = PeerIdentity(fleet: fleet, role: subject.role, name: node)
                let (csr, key) = try FleetPKI.request(identity: identity, hosts: subject.host, ips: subject.ip)
                try makeDirectory(out)
                try FleetPKI.write(key, to: "\(out)/\(node).key", secret: true, force: force)
                try FleetPKI.write(csr, to: "\(out)/\(node).csr", secret: false, force: force)
                print("wrote \(out)/\(node).key (0600, keep it here) and \(out)/\(node).csr for \(identity); send the .csr to the CA holder")
            }
        }
    }

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "On the CA's machine: check a signing request and issue DIR/NAME.pem for it (no private key moves).")

        @Option(help: "Directory holding the fleet's ca.pem and ca.key.")
        var ca: String

        @Option(help: "The request (`dmirr cert request` wrote it).")
        var csr: String

        @Flag(help: "The request is for an operator (refused otherwise, and a node's without it).")
        var `operator` = false

        @Option(help: "Validity in days.")
        var days = 90

        @Option(help: "Directory to write NAME.pem into (created if missing).")
        var out: String

        @Flag(help: "Replace an existing certificate.")
        var force = false

        func run() throws {
            try runReportingErrors {
                let caPEM = try readPEM(ca + "/ca.pem", hint: caHint)
                let keyPEM = try readPEM(ca + "/ca.key", hint: caHint)
                let request = try readPEM(csr, hint: "the file `dmirr cert request` wrote")
                let signed: (certificatePEM: String, identity: PeerIdentity)
                do {
                    signed = try FleetPKI.sign(csrPEM: request, caCertificatePEM: caPEM, caKeyPEM: keyPEM, role: `operator` ? .operator : .node, days: days)
                } catch let error as PKIError { throw PKIError(error.code, "\(csr): \(error.message)", underlying: error.underlying) }
                try makeDirectory(out)
                let path = "\(out)/\(signed.identity.name).pem"
                try FleetPKI.write(signed.certificatePEM, to: path, secret: false, force: force)
                let serial = (try? Certificate(pemEncoded: signed.certificatePEM)).map { RevocationList.hex(Array($0.serialNumber.bytes)) } ?? "?"
                print("wrote \(path) for \(signed.identity), valid \(days) days, serial \(serial); send it back with ca.pem")
            }
        }
    }

    struct Revoke: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Revoke a member's certificates: adds NAME (or --serial) to the fleet's CA-signed revocation list.",
            discussion: """
                Writes DIR/crl.pem (or --out), keeping every earlier revocation and numbering the new list one higher. \
                Give the file to any one agent as [tls] crl: agents pass it on to each other, close the revoked \
                member's links and drop its records. Revoking NAME covers every certificate of that name issued until \
                now, so a certificate issued for it later works again.
                """)

        @Option(help: "Directory holding the fleet's ca.pem and ca.key.")
        var ca: String

        @Argument(help: "The node (or, with --operator, operator) whose certificates to revoke.")
        var name: String?

        @Option(help: "Revoke one certificate by serial number instead (hex, as `dmirr cert issue` printed it).")
        var serial: String?

        @Flag(help: "NAME is an operator, not a node.")
        var `operator` = false

        @Option(help: "Where to write the list (default: DIR/crl.pem, updated in place).")
        var out: String?

        func validate() throws {
            guard (name == nil) != (serial == nil) else { throw ValidationError("give either NAME or --serial, not both or neither") }
        }

        func run() throws {
            try runReportingErrors {
                let caPath = ca + "/ca.pem"
                let verifier: FleetVerifier
                do { verifier = try FleetVerifier(caPath: caPath) } catch { throw PKIError(.badInput, "\(error)") }
                let keyPEM: String
                do { keyPEM = try String(contentsOfFile: ca + "/ca.key", encoding: .utf8) } catch {
                    throw PKIError(.io, "cannot read \(ca)/ca.key (is --ca the directory `dmirr cert ca --out` wrote?)")
                }
                let path = out ?? ca + "/crl.pem"
                var list = RevocationList(fleet: verifier.fleet, number: 0, issuedMillis: 0, entries: [])
                if FileManager.default.fileExists(atPath: path) {
                    // Never lose an earlier revocation: the new list extends the old one, which must be the CA's.
                    do { list = try verifier.load(revocationsAt: path) } catch {
                        throw PKIError(.badInput, "\(error); move it away to start a new list")
                    }
                }
                let now = Int64(Date().timeIntervalSince1970 * 1000)
                let entry: RevocationList.Entry
                if let serial {
                    guard let bytes = RevocationList.serial(hex: serial) else {
                        throw PKIError(.badInput, "'\(serial)' is not a serial number (hex digits, colons allowed)")
                    }
                    entry = .init(target: .serial(bytes), revokedMillis: now)
                } else {
                    let name = name ?? ""
                    guard PeerIdentity.isValidName(name) else {
                        throw PKIError(.invalidName, "'\(name)' is not a valid name: use letters, digits, '-', '.', '_'")
                    }
                    entry = .init(target: .identity(role: `operator` ? .operator : .node, name: name), revokedMillis: now)
                }
                guard list.entries.count < RevocationList.maxEntries else {
                    throw PKIError(.badInput, "\(path) already holds \(RevocationList.maxEntries) revocations, the most a list may hold")
                }
                list.add(entry)
                list.number += 1
                list.issuedMillis = now
                let signed: String
                do { signed = try FleetVerifier.pem(FleetVerifier.signRevocations(list, caKeyPEM: keyPEM)) } catch {
                    throw PKIError(.crypto, "cannot sign the revocation list with \(ca)/ca.key", underlying: error)
                }
                try FleetPKI.write(signed, to: path, secret: false, force: true)
                print("wrote \(path): revocation list \(list.number) of fleet \(list.fleet), \(list.entries.count) revocation(s); revoked \(entry)")
            }
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

private let caHint = "is --ca the directory `dmirr cert ca --out` wrote?"

private func readPEM(_ path: String, hint: String) throws -> String {
    guard FileManager.default.isReadableFile(atPath: path), let text = try? String(contentsOfFile: path, encoding: .utf8) else {
        throw PKIError(.io, "cannot read \(path): missing, unreadable or not text (\(hint))")
    }
    return text
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
