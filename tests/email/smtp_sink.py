"""SMTP sink for the e-mail tests: accepts every mail on 127.0.0.1 (a free port, printed on
stdout once listening) and writes each one to OUTDIR/NNNN.eml, first the envelope recipients
in an `X-Envelope-To:` line, then the message as received. Runs until killed.

Usage: python3 smtp_sink.py OUTDIR
"""

import asyncio
import os
import sys

from aiosmtpd.smtp import SMTP


class Sink:
    def __init__(self, outdir):
        self.outdir = outdir
        self.count = 0

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        path = os.path.join(self.outdir, "%04d.eml" % self.count)
        head = "X-Envelope-To: %s\r\n" % ",".join(envelope.rcpt_tos)
        # Written under another name and renamed, so a reader never sees half a mail.
        with open(path + ".tmp", "wb") as f:
            f.write(head.encode() + envelope.original_content)
        os.rename(path + ".tmp", path)
        return "250 OK"


async def main(outdir):
    loop = asyncio.get_running_loop()
    sink = Sink(outdir)
    server = await loop.create_server(lambda: SMTP(sink), "127.0.0.1", 0)
    print(server.sockets[0].getsockname()[1], flush=True)
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
