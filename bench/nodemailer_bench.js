// The Node reference: nodemailer's pooled SMTP transport sending N small messages over K
// connections (pool: true, maxConnections: K). Every message is composed by nodemailer.
// Prints one JSON line: {"elapsed": seconds from the first sendMail to the last reply, "sent": n}.
//
//   node bench/nodemailer_bench.js --port 2525 --n 5000 --k 4 [--max-messages 100000]
'use strict';

const nodemailer = require('nodemailer');

function args() {
    const out = { host: '127.0.0.1', port: 0, n: 0, k: 1, maxMessages: 100000 };
    const argv = process.argv.slice(2);
    for (let i = 0; i < argv.length; i += 2) {
        const key = argv[i].replace(/^--/, '');
        const value = argv[i + 1];
        if (key === 'host') out.host = value;
        else if (key === 'port') out.port = Number(value);
        else if (key === 'n') out.n = Number(value);
        else if (key === 'k') out.k = Number(value);
        else if (key === 'max-messages') out.maxMessages = Number(value);
        else throw new Error(`unknown option ${argv[i]}`);
    }
    if (!out.port || !out.n) throw new Error('--port and --n are required');
    return out;
}

const TEXT = (i) =>
    `Hello,\n\nthis is benchmark message ${i}.\nNothing to see here.\n\n-- \nThe bench\n`;

async function main() {
    const opts = args();
    const transport = nodemailer.createTransport({
        host: opts.host,
        port: opts.port,
        secure: false,
        ignoreTLS: true,
        pool: true,
        maxConnections: opts.k,
        maxMessages: opts.maxMessages,
        name: 'bench-client',
    });
    const cpu = process.cpuUsage();
    const started = process.hrtime.bigint();
    const sends = [];
    for (let i = 0; i < opts.n; i++) {
        sends.push(
            transport.sendMail({
                from: 'Bench <bench@example.com>',
                to: `rcpt${i}@example.com`,
                subject: `Bench message ${i}`,
                text: TEXT(i),
            })
        );
    }
    const results = await Promise.allSettled(sends);
    const elapsed = Number(process.hrtime.bigint() - started) / 1e9;
    const used = process.cpuUsage(cpu);
    const failed = results.filter((r) => r.status === 'rejected');
    transport.close();
    const out = {
        elapsed,
        sent: results.length - failed.length,
        cpu: (used.user + used.system) / 1e6,
    };
    if (failed.length) out.error = String(failed[0].reason);
    process.stdout.write(JSON.stringify(out) + '\n');
}

main().catch((err) => {
    process.stderr.write(`${err.stack || err}\n`);
    process.exit(1);
});
