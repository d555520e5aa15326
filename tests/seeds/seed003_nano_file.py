import requests

url = "https://api.xhuoapi.ai/v1/openai/images/edits"
headers = {"authorization": "Bearer {token}"}
files = {
    "image": open("apple.png", "rb"),
}
data = {"model": "nano-banana-pro", "prompt": "add a green leaf on top of the apple"}
response = requests.post(url, headers=headers, files=files, data=data)
print(response.text)
