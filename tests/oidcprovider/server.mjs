// A real OpenID provider for the test suite: panva's oidc-provider (OpenID certified), on loopback.
//
// Started by tests/fakes/oidcprovider.py. Configuration from the environment:
//   OIDC_PORT           port to listen on (0, the default: any free port)
//   OIDC_CLIENT_ID      the one client (default "access-broker")
//   OIDC_CLIENT_SECRET  its secret (required; never on argv)
//   OIDC_REDIRECT_URIS  space-separated redirect URIs to start with (more via /__test__/redirect-uris)
//   OIDC_ADMIN_TOKEN    bearer token for /__test__/ (required)
// `--port N` on argv overrides OIDC_PORT. Once listening it prints one JSON line on stdout:
//   {"issuer": "http://127.0.0.1:PORT", "port": PORT}
// and it exits when stdin closes or on SIGTERM/SIGINT, so a test run leaves no orphans.
//
// People: alice (eng), bob (leads), carol (no groups); password "<name>-pw", one-time code "123456".
// The sign-in page takes login, password and an optional one-time code: with the right code the
// sign-in's amr is ["pwd", "otp"] and its acr "mfa", without one ["pwd"] and "pwd".
//
// The test-admin API (POST, JSON, `Authorization: Bearer $OIDC_ADMIN_TOKEN`):
//   /__test__/users/NAME/groups   {"groups": [...]}   the person's groups from now on (refresh too)
//   /__test__/users/NAME/disable                      sign-in and refresh refused from now on
//   /__test__/rotate-keys                             a new RSA key signs; the old one leaves the JWKS
//   /__test__/redirect-uris       {"uri": "..."}      the client may also redirect there
//   /__test__/reset                                   everyone's first groups back, none disabled
// A key rotation or a new redirect URI builds a new Provider instance with the new keys or
// client; sessions, grants, codes and tokens live in oidc-provider's in-memory adapter, whose
// storage is shared by every instance in this process, so they survive the swap.

import { generateKeyPairSync, randomBytes, randomUUID, timingSafeEqual } from 'node:crypto';
import http from 'node:http';

import Provider from 'oidc-provider';

const OTP = '123456';
const MAX_BODY = 64 * 1024; // form and admin bodies are tiny; refuse anything bigger

function setting(name, fallback) {
  const value = process.env[name];
  if (value === undefined || value === '') {
    if (fallback === undefined) {
      process.stderr.write(`oidcprovider: set ${name}\n`);
      process.exit(2);
    }
    return fallback;
  }
  return value;
}

const argvPort = process.argv.indexOf('--port');
const port = Number(argvPort >= 0 ? process.argv[argvPort + 1] : setting('OIDC_PORT', '0'));
const clientId = setting('OIDC_CLIENT_ID', 'access-broker');
const clientSecret = setting('OIDC_CLIENT_SECRET');
const adminToken = setting('OIDC_ADMIN_TOKEN');
const redirectUris = setting('OIDC_REDIRECT_URIS', 'http://127.0.0.1/unused').split(/\s+/).filter(Boolean);

const people = [
  ['alice', { groups: ['eng'], email: 'alice@example.com', name: 'Alice Example' }],
  ['bob', { groups: ['leads'], email: 'bob@corp.example', name: 'Bob Corp' }],
  ['carol', { groups: [], email: 'carol@example.com', name: 'Carol Example' }],
];
const users = new Map();
function resetUsers() {
  for (const [login, user] of people) {
    users.set(login, { ...user, groups: [...user.groups], password: `${login}-pw`, disabled: false });
  }
}
resetUsers();

function subjectFor(login) {
  return `sub-${login}`;
}

function userBySubject(sub) {
  for (const [login, user] of users) {
    if (subjectFor(login) === sub) return [login, user];
  }
  return [undefined, undefined];
}

// Read at every use (ID token, userinfo, refresh): a change through /__test__/ counts at once.
async function findAccount(_ctx, sub) {
  const [login, user] = userBySubject(sub);
  if (!user || user.disabled) return undefined; // refresh: invalid_grant
  return {
    accountId: sub,
    async claims() {
      return {
        sub,
        preferred_username: login,
        name: user.name,
        email: user.email,
        email_verified: true,
        groups: [...user.groups],
      };
    },
  };
}

function newSigningKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomUUID(), alg: 'RS256', use: 'sig' };
}

let signingKey = newSigningKey();
const cookieKeys = [randomBytes(32).toString('base64url')]; // the same for every instance
let issuer; // known once listening
let provider; // the current instance; replaced on rotation or a new redirect URI
let handler; // its provider.callback()

function buildProvider() {
  const built = new Provider(issuer, {
    clients: [
      {
        client_id: clientId,
        client_secret: clientSecret,
        redirect_uris: [...redirectUris],
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        token_endpoint_auth_method: 'client_secret_basic',
        // The library puts sid in ID tokens only for clients that want it for back-channel
        // logout; this URI (ours, a no-op) is never called: the tests do not end sessions there.
        backchannel_logout_uri: `${issuer}/__test__/backchannel-logout`,
        backchannel_logout_session_required: true,
      },
    ],
    clientAuthMethods: ['client_secret_basic', 'client_secret_post'],
    responseTypes: ['code'],
    jwks: { keys: [signingKey] },
    findAccount,
    claims: {
      openid: ['sub', 'acr', 'amr', 'auth_time'], // in every ID token (userinfo has no such claims)
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username', 'groups'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    conformIdTokenClaims: false, // the scopes' claims go IN the ID token, not only userinfo
    acrValues: ['pwd', 'mfa'],
    pkce: { methods: ['S256'], required: () => true },
    // A refresh token for every code this client redeems, without offline_access and
    // prompt=consent, and not bound to the browser session (a test's browser is thrown away).
    issueRefreshToken: async (_ctx, client) => client.grantTypeAllowed('refresh_token'),
    expiresWithSession: async () => false,
    features: { devInteractions: { enabled: false }, backchannelLogout: { enabled: true } },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    cookies: {
      keys: cookieKeys,
      long: { httpOnly: true, sameSite: 'lax', signed: true },
      short: { httpOnly: true, sameSite: 'lax', signed: true },
    },
    ttl: {
      AccessToken: 600,
      AuthorizationCode: 60,
      IdToken: 600,
      Interaction: 600,
      Session: 3600,
      Grant: 3600,
      RefreshToken: 3600,
    },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<p id="error">${escape(out.error)}: ${escape(out.error_description ?? '')}</p>`);
    },
  });
  built.on('server_error', (_ctx, err) => process.stderr.write(`oidcprovider: ${err.stack}\n`));
  return built;
}

function install() {
  provider = buildProvider();
  handler = provider.callback();
}

// -- pages -------------------------------------------------------------------------------------

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

function page(title, body) {
  return `<!doctype html><html><head><meta charset="utf-8"><title>${escape(title)}</title></head>`
    + `<body><h1>${escape(title)}</h1>${body}</body></html>`;
}

function loginPage(uid, { login = '', error = '' } = {}) {
  return page('Sign in', `${error ? `<p id="error">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
  <input type="hidden" name="uid" value="${escape(uid)}">
  <label>Login <input name="login" value="${escape(login)}" autofocus></label>
  <label>Password <input type="password" name="password"></label>
  <label>One-time code (optional) <input name="otp" inputmode="numeric"></label>
  <button type="submit">Sign in</button>
</form>`);
}

function consentPage(uid, clientName, scopes) {
  return page('Allow access', `<p>${escape(clientName)} asks for: ${escape(scopes.join(' '))}</p>
<form method="post" action="/interaction/${escape(uid)}/confirm">
  <input type="hidden" name="uid" value="${escape(uid)}">
  <button type="submit">Allow</button>
</form>`);
}

function send(res, status, type, body) {
  res.writeHead(status, { 'content-type': type, 'cache-control': 'no-store' });
  res.end(body);
}

function sendJson(res, status, body) {
  send(res, status, 'application/json', JSON.stringify(body));
}

async function readBody(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > MAX_BODY) throw Object.assign(new Error('body too large'), { status: 413 });
    chunks.push(chunk);
  }
  return Buffer.concat(chunks).toString('utf8');
}

// -- interactions (the library's documented example, without express) --------------------------

async function interaction(req, res, path) {
  const [, , uid, action] = path.split('/'); // /interaction/UID[/login|/confirm]
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) throw Object.assign(new Error('interaction mismatch'), { status: 400 });
  const { prompt, params } = details;

  if (req.method === 'GET' && action === undefined) {
    if (prompt.name === 'login') return send(res, 200, 'text/html', loginPage(uid));
    const scopes = [...(prompt.details.missingOIDCScope ?? [])];
    return send(res, 200, 'text/html', consentPage(uid, params.client_id, scopes));
  }
  if (req.method !== 'POST') return send(res, 405, 'text/plain', 'method not allowed');
  const form = new URLSearchParams(await readBody(req));

  if (action === 'login' && prompt.name === 'login') {
    const login = form.get('login') ?? '';
    const user = users.get(login);
    // Every refusal looks the same: no telling which of login, password or account was wrong.
    if (!user || user.disabled || form.get('password') !== user.password) {
      return send(res, 200, 'text/html', loginPage(uid, { login, error: 'Wrong login or password.' }));
    }
    const otp = form.get('otp') ?? '';
    if (otp !== '' && otp !== OTP) {
      return send(res, 200, 'text/html', loginPage(uid, { login, error: 'Wrong one-time code.' }));
    }
    const mfa = otp === OTP;
    const result = {
      login: { accountId: subjectFor(login), amr: mfa ? ['pwd', 'otp'] : ['pwd'], acr: mfa ? 'mfa' : 'pwd' },
    };
    return provider.interactionFinished(req, res, result, { mergeWithLastSubmission: false });
  }

  if (action === 'confirm' && prompt.name === 'consent') {
    const { details: missing } = prompt;
    let grant;
    if (details.grantId) {
      grant = await provider.Grant.find(details.grantId);
    } else {
      grant = new provider.Grant({ accountId: details.session.accountId, clientId: params.client_id });
    }
    if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
    if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
    if (missing.missingResourceScopes) {
      for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes)) {
        grant.addResourceScope(indicator, scopes.join(' '));
      }
    }
    const grantId = await grant.save();
    const consent = details.grantId ? {} : { grantId };
    return provider.interactionFinished(req, res, { consent }, { mergeWithLastSubmission: true });
  }
  return send(res, 400, 'text/plain', 'this step is not the one the sign-in is at');
}

// -- test admin --------------------------------------------------------------------------------

async function admin(req, res, path) {
  if (path === '/__test__/backchannel-logout') return send(res, 200, 'text/plain', '');
  const auth = req.headers.authorization ?? '';
  const expected = `Bearer ${adminToken}`;
  // Length first, then a constant-time compare (timingSafeEqual needs equal lengths).
  if (auth.length !== expected.length || !timingSafeEqual(Buffer.from(auth), Buffer.from(expected))) {
    return sendJson(res, 401, { error: 'send Authorization: Bearer $OIDC_ADMIN_TOKEN' });
  }
  if (req.method !== 'POST') return sendJson(res, 405, { error: 'POST only' });
  const raw = await readBody(req);
  let body = {};
  try {
    body = raw ? JSON.parse(raw) : {};
  } catch {
    return sendJson(res, 400, { error: 'the body is not JSON' });
  }

  const userMatch = /^\/__test__\/users\/([a-z]+)\/(groups|disable)$/.exec(path);
  if (userMatch) {
    const user = users.get(userMatch[1]);
    if (!user) return sendJson(res, 404, { error: `no user ${userMatch[1]}` });
    if (userMatch[2] === 'disable') {
      user.disabled = true;
      return sendJson(res, 200, { disabled: userMatch[1] });
    }
    const { groups } = body;
    if (!Array.isArray(groups) || !groups.every((g) => typeof g === 'string')) {
      return sendJson(res, 400, { error: 'groups must be a list of strings' });
    }
    user.groups = [...groups];
    return sendJson(res, 200, { groups: user.groups });
  }
  if (path === '/__test__/reset') {
    resetUsers();
    return sendJson(res, 200, { reset: [...users.keys()] });
  }
  if (path === '/__test__/rotate-keys') {
    const old = signingKey.kid;
    signingKey = newSigningKey();
    install();
    return sendJson(res, 200, { kid: signingKey.kid, removed: old });
  }
  if (path === '/__test__/redirect-uris') {
    const { uri } = body;
    if (typeof uri !== 'string' || !/^https?:\/\//.test(uri)) {
      return sendJson(res, 400, { error: 'uri must be an http(s) URL' });
    }
    if (!redirectUris.includes(uri)) {
      redirectUris.push(uri);
      install();
    }
    return sendJson(res, 200, { redirect_uris: redirectUris });
  }
  return sendJson(res, 404, { error: 'no such test-admin endpoint' });
}

// -- server ------------------------------------------------------------------------------------

const server = http.createServer(async (req, res) => {
  const path = new URL(req.url, 'http://127.0.0.1').pathname;
  try {
    if (path.startsWith('/__test__/')) return await admin(req, res, path);
    if (path.startsWith('/interaction/')) return await interaction(req, res, path);
    return handler(req, res);
  } catch (err) {
    if (!err.status || err.status >= 500) process.stderr.write(`oidcprovider: ${err.stack}\n`);
    if (res.headersSent) return res.end();
    const status = err.status ?? 500;
    return send(res, status, 'text/html', page('Error', `<p id="error">${escape(err.message)}</p>`));
  }
});

server.listen(port, '127.0.0.1', () => {
  const { port: bound } = server.address();
  issuer = `http://127.0.0.1:${bound}`;
  install();
  process.stdout.write(`${JSON.stringify({ issuer, port: bound })}\n`);
});

function stop() {
  server.close();
  server.closeAllConnections();
  process.exit(0);
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
process.stdin.on('end', stop);
process.stdin.on('close', stop);
process.stdin.resume();
