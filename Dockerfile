# vitalgate: one image for the ingest service, gateways (real BLE through BlueZ or --simulate) and tools.
FROM python:3.11-slim

RUN apt-get update \
 && apt-get install -y --no-install-recommends openssl mosquitto-clients \
 && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY vitalgate ./vitalgate
COPY ews ./ews
COPY e86 ./e86
COPY gatt ./gatt
COPY gateway ./gateway
COPY ingest ./ingest
COPY simulators ./simulators
COPY config ./config
RUN pip install --no-cache-dir .

RUN useradd --system --home /var/lib/vitalgate --create-home vitalgate
USER vitalgate
ENV VITALGATE_DATA_DIR=/var/lib/vitalgate
VOLUME ["/var/lib/vitalgate"]
EXPOSE 8080
ENTRYPOINT ["vitalgate"]
CMD ["ingest"]
