import requests

API_KEY = "sk-your-api-key"

with open("photo.png", "rb") as f:
    response = requests.post(
        "https://api.apiyi.com/v1/images/edits",
        headers={"Authorization": f"Bearer {API_KEY}"},
        data={"model": "gpt-image-2-all", "prompt": "把背景换成海边黄昏", "response_format": "url"},
        files=[("image[]", ("photo.png", f, "image/png"))],
        timeout=120,
    ).json()

print(response["data"][0]["url"])
