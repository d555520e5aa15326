import requests

with open("ref1.png", "rb") as f1, open("ref2.png", "rb") as f2, open("ref3.png", "rb") as f3:
    response = requests.post(
        "https://api.apiyi.com/v1/images/edits",
        headers={"Authorization": "Bearer sk-your-api-key"},
        data={
            "model": "gpt-image-2-all",
            "prompt": "把图1的人物放进图2的场景,参考图3的画风",
            "response_format": "b64_json",
        },
        files=[
            ("image[]", ("ref1.png", f1, "image/png")),
            ("image[]", ("ref2.png", f2, "image/png")),
            ("image[]", ("ref3.png", f3, "image/png")),
        ],
        timeout=120,
    ).json()

# b64_json 已含 "data:image/png;base64," 前缀,可直接用于 <img src>
data_url = response["data"][0]["b64_json"]
print(data_url[:40])
