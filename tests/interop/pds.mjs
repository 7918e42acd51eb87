// The reference atproto PDS and PLC directory (@atproto/dev-env) on localhost, for interop tests.
//
//   node pds.mjs [--watch-stdin]
//
// Prints one JSON line when ready: {"event":"ready","plc":URL,"pds":URL,"control":URL,"pid":N,
// "scratch":DIR} (DIR holds the PDS's files and is removed on exit).
// The control API (loopback, JSON):
//   GET  /               → {plc, pds}
//   POST /accounts       {name?}                → {did, handle, accessJwt}
//   POST /service-auth   {did, aud, lxm?, exp?} → {token}   (com.atproto.server.getServiceAuth)
//   POST /shutdown                              → 202, then exits
// Errors come back as {"error", "message"} with the PDS's own XRPC error name where there is one.
// It exits cleanly on SIGTERM/SIGINT, on /shutdown, when its parent process dies, and (only with
// --watch-stdin, since CI runs with no stdin) when stdin closes.

import { mkdtempSync, rmSync } from 'node:fs'
import { createServer } from 'node:http'
import { tmpdir } from 'node:os'
import { join } from 'node:path'

// The dev-env PDS writes its SQLite files and blobs under os.tmpdir() and never removes them:
// give it a directory of its own and delete it on the way out.
const scratch = mkdtempSync(join(tmpdir(), 'spindle-pds-'))
process.env.TMPDIR = scratch

let network = null // the PLC and PDS, once started
let control = null // the control API server, once listening
let starting = null // the start-up, awaited by a shutdown that interrupts it
let stopping = null

function emit(event) {
  process.stdout.write(JSON.stringify(event) + '\n')
}

function shutdown(reason, code = 0) {
  stopping ??= (async () => {
    clearInterval(parentWatch)
    try {
      if (control) {
        control.close()
        control.closeAllConnections()
      }
      // Stopped while starting: let the start settle so that no listening socket is left.
      await starting?.catch(() => {})
      await network?.close()
    } finally {
      rmSync(scratch, { recursive: true, force: true })
      emit({ event: 'stopped', reason })
      process.exit(code)
    }
  })()
  return stopping
}

// Handlers first, so that a signal during the few seconds of start-up still cleans up.
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
// A parent killed with SIGKILL sends nothing: notice being re-parented and leave too.
const parent = process.ppid
const parentWatch = setInterval(() => {
  if (process.ppid !== parent) shutdown('parent exited')
}, 1000)
parentWatch.unref()
if (process.argv.includes('--watch-stdin')) {
  process.stdin.on('end', () => shutdown('stdin closed'))
  process.stdin.on('error', () => shutdown('stdin closed'))
  process.stdin.resume()
}

const agents = new Map() // did → AtpAgent logged in as that account
let accountCount = 0

class BadRequest extends Error {}

async function readJson(req) {
  const chunks = []
  for await (const chunk of req) chunks.push(chunk)
  if (chunks.length === 0) return {}
  try {
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8'))
    if (body === null || typeof body !== 'object' || Array.isArray(body)) throw new Error()
    return body
  } catch {
    throw new BadRequest('body must be a JSON object')
  }
}

async function createAccount({ name }) {
  accountCount += 1
  const label = name ?? `user${accountCount}${Math.random().toString(36).slice(2, 8)}`
  const handle = `${label}.test`
  const agent = network.pds.getClient()
  const res = await agent.createAccount({
    handle,
    email: `${label}@example.test`,
    password: `password-${label}`,
  })
  agents.set(res.data.did, agent)
  return { did: res.data.did, handle: res.data.handle, accessJwt: res.data.accessJwt }
}

async function serviceAuth({ did, aud, lxm, exp }) {
  const agent = agents.get(did)
  if (!agent) throw new BadRequest(`no account ${did} was created by this harness`)
  if (typeof aud !== 'string') throw new BadRequest('aud must be a string (the service DID)')
  const params = { aud }
  if (lxm !== undefined) params.lxm = lxm
  if (exp !== undefined) params.exp = exp
  const res = await agent.com.atproto.server.getServiceAuth(params)
  return { token: res.data.token }
}

const routes = {
  'GET /': async () => ({ plc: network.plc.url, pds: network.pds.url }),
  'POST /accounts': async (req) => createAccount(await readJson(req)),
  'POST /service-auth': async (req) => serviceAuth(await readJson(req)),
}

async function handle(req, res) {
  const reply = (status, body) => {
    res.writeHead(status, { 'content-type': 'application/json' })
    res.end(JSON.stringify(body))
  }
  if (req.method === 'POST' && req.url === '/shutdown') {
    reply(202, { stopping: true })
    shutdown('shutdown request')
    return
  }
  const route = routes[`${req.method} ${req.url}`]
  if (!route) return reply(404, { error: 'NotFound', message: `no route ${req.method} ${req.url}` })
  try {
    reply(200, await route(req))
  } catch (err) {
    if (err instanceof BadRequest) return reply(400, { error: 'InvalidRequest', message: err.message })
    // An XRPC error from the PDS: keep its status and error name so tests can assert on them.
    if (typeof err?.status === 'number' && err.status >= 400) {
      return reply(err.status, { error: err.error ?? 'Error', message: err.message })
    }
    reply(500, { error: 'InternalError', message: String(err?.stack ?? err) })
  }
}

starting = (async () => {
  const { TestNetworkNoAppView } = await import('@atproto/dev-env')
  network = await TestNetworkNoAppView.create({})
  if (stopping) return
  control = createServer(handle)
  control.keepAliveTimeout = 1000
  await new Promise((resolve) => control.listen(0, '127.0.0.1', resolve))
})()
try {
  await starting
} catch (err) {
  process.stderr.write(`pds.mjs: start-up failed: ${err?.stack ?? err}\n`)
  await shutdown('start-up failed', 1)
}
if (!stopping) {
  emit({
    event: 'ready',
    plc: network.plc.url,
    pds: network.pds.url,
    control: `http://127.0.0.1:${control.address().port}`,
    pid: process.pid,
    scratch,
  })
}
