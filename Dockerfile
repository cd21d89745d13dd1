# syntax=docker/dockerfile:1
# Multi-stage: build a wheel set in one stage, copy only the installed package into a slim runtime
# running as a non-root numeric user.  The daemon (`reversib run`) and its HEALTHCHECK arrive with
# the daemon issue; until then the image runs `verify-now --all` over /etc/reversib/checks.
FROM python:3.11-slim-bookworm AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY reversib ./reversib
RUN pip install --no-cache-dir --prefix=/install ".[postgres]"

FROM python:3.11-slim-bookworm
ARG UID=10001
RUN groupadd --gid "${UID}" reversib \
 && useradd --uid "${UID}" --gid "${UID}" --no-create-home --home-dir /var/lib/reversib --shell /usr/sbin/nologin reversib \
 && mkdir -p /var/lib/reversib && chown "${UID}:${UID}" /var/lib/reversib
COPY --from=build /install /usr/local
COPY config/ /etc/reversib/config/
COPY checks/ /etc/reversib/checks/
COPY samples/ /etc/reversib/samples/
ENV REVERSIB_CONFIG=/etc/reversib/config/reversib.yaml \
    REVERSIB_HISTORY_URL=sqlite:////var/lib/reversib/history.db \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1
VOLUME ["/var/lib/reversib"]
USER ${UID}:${UID}
ENTRYPOINT ["reversib"]
CMD ["verify-now", "--all"]
