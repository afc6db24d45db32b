// A real OpenID Provider (oidc-provider) on loopback for tests/it/remote_keys.rs and
// tests/it/oidc_login.rs, and for examples/oidc.
//
//   node provider.mjs --port 0 --key-dir DIR --kids signing[,other...] [--redirect-uri URL]...
//                     [--backchannel-uri URL]
//
// Listens on 127.0.0.1 (port 0: any free one) with issuer http://127.0.0.1:<port>, and prints
// `listening <issuer>` once it serves. Its signing keys are RSA keys named by --kids, kept as
// private JWKs in --key-dir (made on first use, so a restart with the same names serves the same
// keys): the first signs, all are published in its JWKS. Restarting it with other names on the
// same port is how a test rotates the provider's keys.
//
// One client, `portcullis-tests`, may use the client-credentials grant; its access tokens are
// JWTs (RFC 9068, `typ: at+jwt`) for the resource `urn:portcullis:api`, audience
// `portcullis-tests`, with the scopes asked for out of `documents.read documents.write`.
//
// Two clients sign browsers in with the authorization code flow, PKCE S256 required:
// `portcullis-gateway` (the gateway; its redirect URIs are the --redirect-uri arguments) and
// `another-app` (a second relying party, whose ID tokens the gateway must refuse). The
// built-in development login and consent pages are on: any login name with any password signs
// in as that user. Every user has `email` <login>@example.com (verified) and `groups`: `staff`
// and `reader`, plus `editor` for logins starting with `editor`, none at all for logins
// starting with `outsider`. Scope claims go into the ID token (conformIdTokenClaims: false).
// A sign-out at the provider (its end_session_endpoint) POSTs a Back-Channel Logout token for
// `portcullis-gateway` to --backchannel-uri (default: the first redirect URI with
// /backchannel-logout for /callback). With `offline_access` (and prompt=consent) the gateway's
// client gets a refresh token, rotated at each use; revocation (RFC 7009) is on, and each
// refresh_token grant prints `refresh ok` or `refresh <error>`. `POST /test/groups?login=L&groups=a,b`
// changes a user's groups (the ID tokens issued after it carry them).
import { createServer } from 'node:http';
import { createPrivateKey, generateKeyPairSync } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Provider from 'oidc-provider';

function arg(name, fallback) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1] : fallback;
}

const port = Number(arg('port', '0'));
const keyDir = arg('key-dir', '.');
const kids = arg('kids', 'key-1').split(',');

// Each key is also written as PKCS#8 PEM (`<kid>.key.pem`), so that a test can sign what the
// provider would (a back-channel logout token) with the provider's own key.
function privateJwk(kid) {
  const file = join(keyDir, `${kid}.jwk.json`);
  if (existsSync(file)) return JSON.parse(readFileSync(file, 'utf8'));
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  const jwk = { ...privateKey.export({ format: 'jwk' }), kid, alg: 'RS256', use: 'sig' };
  writeFileSync(file, JSON.stringify(jwk), { mode: 0o600 });
  const pem = createPrivateKey({ key: jwk, format: 'jwk' }).export({ type: 'pkcs8', format: 'pem' });
  writeFileSync(join(keyDir, `${kid}.key.pem`), pem, { mode: 0o600 });
  return jwk;
}

export const CLIENT_ID = 'portcullis-tests';
export const CLIENT_SECRET = 'a-test-client-secret-long-enough-for-hs256-0123456789';
export const GATEWAY_CLIENT_ID = 'portcullis-gateway';
export const GATEWAY_CLIENT_SECRET = 'a-gateway-client-secret-for-the-code-flow-0123456789';
export const OTHER_CLIENT_ID = 'another-app';
export const OTHER_CLIENT_SECRET = 'another-app-client-secret-for-the-code-flow-0123456789';

function redirectUris() {
  const uris = [];
  process.argv.forEach((a, i) => {
    if (a === '--redirect-uri') uris.push(process.argv[i + 1]);
  });
  return uris.length ? uris : ['https://gateway.test/auth/oidc/local/callback'];
}

// Groups set by a test (`POST /test/groups?login=<login>&groups=a,b`), in place of the
// defaults below: a user's groups changing at the provider.
const setGroups = new Map();

function groupsOf(login) {
  if (setGroups.has(login)) return setGroups.get(login);
  if (login.startsWith('outsider')) return [];
  return login.startsWith('editor') ? ['staff', 'reader', 'editor'] : ['staff', 'reader'];
}

const server = createServer();
server.listen(port, '127.0.0.1', () => {
  const issuer = `http://127.0.0.1:${server.address().port}`;
  const provider = new Provider(issuer, {
    clients: [
      {
        client_id: CLIENT_ID,
        client_secret: CLIENT_SECRET,
        grant_types: ['client_credentials'],
        redirect_uris: [],
        response_types: [],
      },
      {
        client_id: GATEWAY_CLIENT_ID,
        client_secret: GATEWAY_CLIENT_SECRET,
        // refresh_token: with `offline_access` (and consent asked for), a refresh token.
        grant_types: ['authorization_code', 'refresh_token'],
        response_types: ['code'],
        redirect_uris: redirectUris(),
        // RP-initiated logout comes back to the gateway's login page.
        post_logout_redirect_uris: [new URL('/auth/login', redirectUris()[0]).href],
        token_endpoint_auth_method: 'client_secret_basic',
        // ID tokens carry `sid` because of it (backchannel_logout_session_required).
        backchannel_logout_uri: arg(
          'backchannel-uri',
          redirectUris()[0].replace(/\/callback$/, '/backchannel-logout'),
        ),
        backchannel_logout_session_required: true,
      },
      {
        client_id: OTHER_CLIENT_ID,
        client_secret: OTHER_CLIENT_SECRET,
        grant_types: ['authorization_code'],
        response_types: ['code'],
        redirect_uris: ['https://another-app.test/callback'],
        token_endpoint_auth_method: 'client_secret_basic',
      },
    ],
    pkce: { required: () => true },
    // Every refresh rotates the refresh token (a reused one is refused: invalid_grant).
    rotateRefreshToken: () => true,
    // Its outgoing requests (the back-channel logout POST) refuse loopback addresses by default
    // (SSRF protection); the gateway it tells is on loopback here, so that guard is dropped.
    fetch: (url, options) => {
      delete options.dispatcher;
      return fetch(url, options);
    },
    conformIdTokenClaims: false,
    scopes: ['openid', 'email', 'groups', 'offline_access'],
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      groups: ['groups'],
    },
    async findAccount(ctx, id) {
      return {
        accountId: id,
        async claims() {
          return { sub: id, email: `${id}@example.com`, email_verified: true, groups: groupsOf(id) };
        },
      };
    },
    jwks: { keys: kids.map(privateJwk) },
    features: {
      devInteractions: { enabled: true },
      backchannelLogout: { enabled: true },
      clientCredentials: { enabled: true },
      // RFC 7009: a test revokes a refresh token (its whole grant) here.
      revocation: { enabled: true },
      resourceIndicators: {
        enabled: true,
        defaultResource: () => 'urn:portcullis:api',
        useGrantedResource: () => true,
        getResourceServerInfo: () => ({
          scope: 'documents.read documents.write',
          audience: 'portcullis-tests',
          accessTokenFormat: 'jwt',
          jwt: { sign: { alg: 'RS256' } },
        }),
      },
    },
  });
  // What a test needs to know when a back-channel logout did not arrive.
  provider.on('backchannel.error', (ctx, err) => console.log(`backchannel.error ${err.message} ${err.cause}`));
  provider.on('backchannel.success', () => console.log('backchannel.success'));
  // Every refresh at the token endpoint, counted by the tests: `refresh ok` or
  // `refresh <error>`.
  provider.on('grant.success', (ctx) => {
    if (ctx.oidc.params.grant_type === 'refresh_token') console.log('refresh ok');
  });
  provider.on('grant.error', (ctx, err) => {
    if (ctx.oidc.params?.grant_type === 'refresh_token') console.log(`refresh ${err.error}`);
  });
  const callback = provider.callback();
  server.on('request', (req, res) => {
    const url = new URL(req.url, issuer);
    if (req.method === 'POST' && url.pathname === '/test/groups') {
      const groups = url.searchParams.get('groups');
      setGroups.set(url.searchParams.get('login'), groups ? groups.split(',') : []);
      res.writeHead(204).end();
      return;
    }
    callback(req, res);
  });
  console.log(`listening ${issuer}`);
});

// The test stops it with SIGTERM; close at once rather than drain keep-alive connections.
process.on('SIGTERM', () => process.exit(0));
