/* A C device enrolling through the iiot-acme embedded client's C API (iiot_acme.h), with
 * OpenSSL as its TLS stack: what C firmware does with its own stack, on a host. Run by
 * tests/tests/embedded_capi.rs against the real CA.
 *
 *   enroll BASE_URL ROOT_PEM EAB_KID EAB_HMAC TYPE:VALUE OUT_PEM [IDEVID_CERT_PEM IDEVID_KEY_PEM]
 *
 * TYPE is dns, ip or permanent. EAB_KID and EAB_HMAC are "-" for no credential. With an IDevID
 * certificate and its P-256 key (PEM), the enrollment may answer device-attest-01: the signer
 * callback signs with OpenSSL, where a device would ask its secure element. The CA root is pinned: it is the only trust anchor, and the
 * server certificate must name the host of BASE_URL. Exit status: 0 issued (chain written to
 * OUT_PEM), 2 usage, 3 the enrollment failed (the status, problem type and detail are printed
 * as "enroll: failed: IIOT_STATUS_... problem=... http=... detail=..."), 4 TLS or I/O. */
#define _POSIX_C_SOURCE 200809L

#include <arpa/inet.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include "iiot_acme.h"

/* The sizes the client's driver uses: every request and response of an enrollment fits. */
static uint8_t tx[4096];
static uint8_t rx[4096];
/* Static, as firmware would keep it; it must not move once initialised. */
static IiotEnrollment enrollment;

static int fail_tls(const char *what) {
    fprintf(stderr, "enroll: %s\n", what);
    ERR_print_errors_fp(stderr);
    return 4;
}

static int32_t rng(void *ctx, uint8_t *buf, size_t len) {
    (void)ctx;
    return RAND_bytes(buf, (int)len) == 1 ? 0 : -1;
}

static int report(IiotStatus status) {
    IiotErrorInfo info;
    if (iiot_last_error(&enrollment, &info) != IIOT_STATUS_OK) {
        memset(&info, 0, sizeof info);
        info.status = status;
    }
    fprintf(stderr, "enroll: failed: %s problem=%s http=%u needed=%zu detail=%s\n",
            iiot_status_str((int32_t)info.status), iiot_problem_str((int32_t)info.problem),
            (unsigned)info.http_status, info.needed, info.detail);
    return 3;
}

struct conn {
    int fd;
    SSL *ssl;
};

static void conn_close(struct conn *c) {
    if (c->ssl) {
        SSL_shutdown(c->ssl);
        SSL_free(c->ssl);
    }
    if (c->fd >= 0) close(c->fd);
    c->ssl = NULL;
    c->fd = -1;
}

/* TCP to host:port, then TLS pinned to the root in ctx and checked against host. */
static int conn_open(struct conn *c, SSL_CTX *ctx, const char *host, const char *port) {
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_socktype = SOCK_STREAM;
    if (getaddrinfo(host, port, &hints, &res) != 0 || !res) return fail_tls("cannot resolve host");
    c->fd = socket(res->ai_family, res->ai_socktype, res->ai_protocol);
    if (c->fd < 0 || connect(c->fd, res->ai_addr, res->ai_addrlen) != 0) {
        freeaddrinfo(res);
        return fail_tls("cannot connect");
    }
    freeaddrinfo(res);
    c->ssl = SSL_new(ctx);
    if (!c->ssl) return fail_tls("SSL_new");
    unsigned char ip[16];
    int is_ip = inet_pton(AF_INET, host, ip) == 1 || inet_pton(AF_INET6, host, ip) == 1;
    X509_VERIFY_PARAM *param = SSL_get0_param(c->ssl);
    if (is_ip ? X509_VERIFY_PARAM_set1_ip_asc(param, host) != 1
              : (SSL_set1_host(c->ssl, host) != 1 || SSL_set_tlsext_host_name(c->ssl, host) != 1))
        return fail_tls("cannot set the expected server name");
    SSL_set_fd(c->ssl, c->fd);
    if (SSL_connect(c->ssl) != 1) return fail_tls("TLS handshake failed (is the root pinned?)");
    return 0;
}

/* Sends the request and reads one whole response into rx; *len is its length. A connection
 * per exchange keeps this short; firmware would keep it open while the server does. */
static int exchange(SSL_CTX *ctx, const char *host, const char *port, size_t req_len,
                    size_t *len, IiotStatus *framing) {
    struct conn c = {-1, NULL};
    int rc = conn_open(&c, ctx, host, port);
    if (rc != 0) {
        conn_close(&c);
        return rc;
    }
    if (SSL_write(c.ssl, tx, (int)req_len) != (int)req_len) {
        conn_close(&c);
        return fail_tls("write failed");
    }
    size_t got = 0, total = 0;
    *framing = IIOT_STATUS_OK;
    while (total == 0) {
        if (got == sizeof rx) {
            *framing = IIOT_STATUS_RESPONSE_TOO_LARGE;
            break;
        }
        int n = SSL_read(c.ssl, rx + got, (int)(sizeof rx - got));
        uint8_t eof = 0;
        if (n > 0) {
            got += (size_t)n;
        } else if (SSL_get_error(c.ssl, n) == SSL_ERROR_ZERO_RETURN || got > 0) {
            eof = 1;
        } else {
            conn_close(&c);
            return fail_tls("read failed");
        }
        *framing = iiot_response_complete(rx, got, eof, &total);
        if (*framing != IIOT_STATUS_OK) break;
    }
    conn_close(&c);
    *len = total;
    return 0;
}

/* The IDevID: its certificate (DER) and key. On a device the key stays in a secure element and
 * `idevid_sign` is a call into it. */
static unsigned char *idevid_der;
static size_t idevid_der_len;
static EVP_PKEY *idevid_key;

static int load_idevid(const char *cert_path, const char *key_path) {
    FILE *f = fopen(cert_path, "r");
    X509 *cert = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    f = fopen(key_path, "r");
    idevid_key = f ? PEM_read_PrivateKey(f, NULL, NULL, NULL) : NULL;
    if (f) fclose(f);
    int len = cert ? i2d_X509(cert, &idevid_der) : -1;
    X509_free(cert);
    if (len <= 0 || !idevid_key) return -1;
    idevid_der_len = (size_t)len;
    return 0;
}

/* IiotSignFn for ES256 (COSE -7): an ECDSA signature over SHA-256, DER-encoded, which is what
 * OpenSSL produces. */
static int32_t idevid_sign(void *ctx, const uint8_t *message, size_t message_len, uint8_t *out,
                           size_t out_cap, size_t *out_len) {
    (void)ctx;
    EVP_MD_CTX *md = EVP_MD_CTX_new();
    size_t sig_len = out_cap;
    int ok = md && EVP_DigestSignInit(md, NULL, EVP_sha256(), NULL, idevid_key) == 1 &&
             EVP_DigestSign(md, out, &sig_len, message, message_len) == 1;
    EVP_MD_CTX_free(md);
    if (!ok) return -1;
    *out_len = sig_len;
    return 0;
}

static int parse_identifier(char *arg, IiotIdentifier *id) {
    char *colon = strchr(arg, ':');
    if (!colon) return -1;
    *colon = '\0';
    id->value = colon + 1;
    if (strcmp(arg, "dns") == 0) id->type = IIOT_IDENTIFIER_DNS;
    else if (strcmp(arg, "ip") == 0) id->type = IIOT_IDENTIFIER_IP;
    else if (strcmp(arg, "permanent") == 0) id->type = IIOT_IDENTIFIER_PERMANENT;
    else return -1;
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 7 && argc != 9) {
        fprintf(stderr,
                "usage: %s BASE_URL ROOT_PEM EAB_KID EAB_HMAC TYPE:VALUE OUT_PEM"
                " [IDEVID_CERT_PEM IDEVID_KEY_PEM]\n",
                argv[0]);
        return 2;
    }
    if (argc == 9 && load_idevid(argv[7], argv[8]) != 0) {
        fprintf(stderr, "enroll: cannot load the IDevID certificate and key\n");
        return 2;
    }
    const char *base_url = argv[1], *root = argv[2], *out_path = argv[6];
    IiotIdentifier id;
    if (parse_identifier(argv[5], &id) != 0) {
        fprintf(stderr, "enroll: identifier must be dns:, ip: or permanent:VALUE\n");
        return 2;
    }
    /* https://HOST:PORT */
    static char host[256], port[8];
    if (sscanf(base_url, "https://%255[^:/]:%7[0-9]", host, port) != 2) {
        fprintf(stderr, "enroll: base URL must be https://HOST:PORT\n");
        return 2;
    }
    if (iiot_enrollment_size() != sizeof(IiotEnrollment)) {
        fprintf(stderr, "enroll: iiot_acme.h does not match the library\n");
        return 2;
    }

    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (!ctx) return fail_tls("SSL_CTX_new");
    /* Only the CA's root: no system trust store. */
    if (SSL_CTX_load_verify_locations(ctx, root, NULL) != 1) return fail_tls("cannot load root");
    SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION);

    /* A real device generates these once and keeps them in protected storage. */
    uint8_t account_key[32], certificate_key[32];
    IiotStatus s = iiot_key_generate(rng, NULL, account_key);
    if (s == IIOT_STATUS_OK) s = iiot_key_generate(rng, NULL, certificate_key);
    if (s != IIOT_STATUS_OK) {
        fprintf(stderr, "enroll: key generation: %s\n", iiot_status_str((int32_t)s));
        return 3;
    }

    IiotConfig config = {0};
    config.base_url = base_url;
    config.identifiers = &id;
    config.identifier_count = 1;
    if (strcmp(argv[3], "-") != 0) {
        config.eab_kid = argv[3];
        config.eab_hmac_key = argv[4];
    }
    const uint8_t *chain[1] = {idevid_der};
    size_t chain_lens[1] = {idevid_der_len};
    IiotIdevidSigner signer = {0};
    signer.cose_alg = -7;
    signer.chain = chain;
    signer.chain_lens = chain_lens;
    signer.chain_count = 1;
    signer.sign = idevid_sign;
    s = iiot_enrollment_init(&enrollment, &config, account_key, certificate_key,
                             idevid_key ? &signer : NULL);
    if (s != IIOT_STATUS_OK) return report(s);
    /* ENROLL_TRACE=1: print each request line and response. */
    const char *trace_env = getenv("ENROLL_TRACE");
    int trace = trace_env && strcmp(trace_env, "0") != 0;
    int rc = 3;
    /* The most of each buffer any step used, for the footprint report. */
    size_t max_req = 0, max_resp = 0, max_scratch = 0;
    for (int step = 0; step < 200; step++) {
        size_t req_len = 0, resp_len = 0;
        /* rx is the scratch space: paint it to see how far the request building wrote. */
        memset(rx, 0xa5, sizeof rx);
        s = iiot_next_request(&enrollment, tx, sizeof tx, rx, sizeof rx, &req_len);
        if (s != IIOT_STATUS_OK) {
            rc = report(s);
            break;
        }
        size_t used = sizeof rx;
        while (used > 0 && rx[used - 1] == 0xa5) used--;
        if (used > max_scratch) max_scratch = used;
        if (req_len > max_req) max_req = req_len;
        IiotStatus framing;
        rc = exchange(ctx, host, port, req_len, &resp_len, &framing);
        if (rc != 0) break;
        if (framing != IIOT_STATUS_OK) {
            fprintf(stderr, "enroll: failed: %s (framing)\n", iiot_status_str((int32_t)framing));
            rc = 3;
            break;
        }
        if (resp_len > max_resp) max_resp = resp_len;
        if (trace) {
            fprintf(stderr, "> %.*s\n", (int)(strchr((char *)tx, '\r') - (char *)tx), (char *)tx);
            fprintf(stderr, "< %.*s\n", (int)resp_len, (char *)rx);
        }
        IiotEvent ev;
        s = iiot_handle_response(&enrollment, rx, resp_len, &ev);
        if (s != IIOT_STATUS_OK) {
            rc = report(s);
            break;
        }
        rc = 3;
        if (ev.kind == IIOT_EVENT_KIND_WAIT) {
            sleep(ev.seconds);
        } else if (ev.kind == IIOT_EVENT_KIND_AWAITING_APPROVAL) {
            fprintf(stderr, "enroll: awaiting approval, pairing code %s\n", ev.pairing_code);
            sleep(ev.seconds);
        } else if (ev.kind == IIOT_EVENT_KIND_ISSUED) {
            FILE *f = fopen(out_path, "wb");
            if (!f || fwrite(rx + ev.pem_offset, 1, ev.pem_len, f) != ev.pem_len || fclose(f) != 0) {
                fprintf(stderr, "enroll: cannot write %s\n", out_path);
                rc = 4;
            } else {
                fprintf(stderr, "enroll: issued, %zu octets of PEM in %s\n", ev.pem_len, out_path);
                rc = 0;
            }
            break;
        }
    }
    fprintf(stderr, "enroll: buffers used: request %zu, response %zu, scratch %zu (of %zu/%zu)\n",
            max_req, max_resp, max_scratch, sizeof tx, sizeof rx);
    iiot_enrollment_clear(&enrollment);
    OPENSSL_cleanse(account_key, sizeof account_key);
    OPENSSL_cleanse(certificate_key, sizeof certificate_key);
    SSL_CTX_free(ctx);
    EVP_PKEY_free(idevid_key);
    OPENSSL_free(idevid_der);
    return rc;
}
