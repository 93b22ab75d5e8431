// Tells the access log whether a proxied response reached its end (roles/nginx_proxy).
// A chunked upstream response that stops without its last chunk (the gateway worker
// relaying it died) still logs status 200, upstream_status 200 and completion "OK";
// only this variable tells it apart: "cut" from the moment the upstream's header
// goes out, "complete" once its last byte does. nginx.conf sets "-" for answers nginx
// makes itself (error pages, redirects) and servers without these filters.

function header(r) {
    r.variables.gpuserve_response_end = 'cut';
}

function body(r, data, flags) {
    if (flags.last) {
        r.variables.gpuserve_response_end = 'complete';
    }
    // Pass every buffer on as it came, flush flag included: streams stay unbuffered.
    r.sendBuffer(data, flags);
}

export default { header, body };
